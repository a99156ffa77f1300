//! A ready-made database's data directory when its setup hook runs again.

/// The data directory of a setup hook run again (`restart --setup`, `start_with_setup`):
/// removed, so the hook makes a fresh one as it says (a copy went inside the old one, whose
/// data stayed). It is in the run's private directory, made by us.
pub(super) fn clear_old_data(
    ctx: &crate::HookContext<'_>,
    data: &std::path::Path,
) -> crate::Result<()> {
    if std::fs::symlink_metadata(data).is_err() {
        return Ok(());
    }
    std::fs::remove_dir_all(data).map_err(|source| crate::Error::Io {
        context: format!("removing the previous data directory `{}`", data.display()),
        source,
    })?;
    ctx.log(&format!(
        "removed the previous data directory {}",
        data.display()
    ));
    Ok(())
}

//! Which ready-made kind made a service: each kind's `handle` stands on it, so a handle is
//! never made of a service another kind (or none) made.

/// The service called `name`, if the ready-made `kind` made it: what each kind's `handle`
/// stands on (a handle of another service would ask it what it can't answer).
pub(super) fn service_of_kind(
    bundle: &crate::Bundle,
    name: &str,
    kind: &'static str,
) -> crate::Result<crate::ServiceHandle> {
    let service = bundle.service(name)?;
    match service.kind() == Some(kind) {
        true => Ok(service),
        false => Err(crate::Error::NotAService {
            service: name.to_owned(),
            kind: kind.to_owned(),
        }),
    }
}

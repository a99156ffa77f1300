/*
 * hitchserve's time-travel shim, preloaded just before libfaketime.
 *
 * libfaketime (Debian's 0.9.10) fakes the clocks of a service; hitchserve drives it with a
 * relative offset in a timestamp file. Two things it can't do well are done here:
 *  - Wall-clock reads (clock_gettime on the REALTIME clocks, gettimeofday, time) add the
 *    offset that hitchserve keeps in an 8-byte shared memory map (HITCHSERVE_CLOCK_OFFSET):
 *    a jump is seen on the very next read, and a read costs no system call. libfaketime
 *    only sees a jump at once if it re-reads its file on every call (FAKETIME_NO_CACHE),
 *    which costs a few microseconds each.
 *  - Sleeps on the monotonic clocks go straight to the kernel: monotonic time is never
 *    faked under hitchserve (FAKETIME_DONT_FAKE_MONOTONIC), and libfaketime 0.9.10's
 *    clock_nanosleep turns absolute monotonic deadlines into EINVAL (Python's time.sleep).
 * Everything else (timers, file times, realtime deadlines...) is libfaketime's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

static const volatile int64_t *offset_ns;
static clock_gettime_fn libc_clock_gettime;
static clock_gettime_fn next_clock_gettime;
static clock_nanosleep_fn next_clock_nanosleep;

__attribute__((constructor)) static void hitchserve_shim_init(void) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (libc)
        libc_clock_gettime = (clock_gettime_fn)dlsym(libc, "clock_gettime");
    next_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    next_clock_nanosleep = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
    const char *path = getenv("HITCHSERVE_CLOCK_OFFSET");
    if (!path || !libc_clock_gettime)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    void *p = mmap(0, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED)
        offset_ns = (const volatile int64_t *)p;
}

static int is_wall_clock(clockid_t clk) {
    return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE || clk == CLOCK_TAI ||
           clk == CLOCK_REALTIME_ALARM;
}

static void shift(struct timespec *ts, int64_t off) {
    int64_t ns = (int64_t)ts->tv_nsec + off % 1000000000LL;
    ts->tv_sec += off / 1000000000LL + ns / 1000000000LL;
    ns %= 1000000000LL;
    if (ns < 0) {
        ns += 1000000000LL;
        ts->tv_sec -= 1;
    }
    ts->tv_nsec = ns;
}

static int64_t offset(void) {
    return offset_ns ? __atomic_load_n((const int64_t *)offset_ns, __ATOMIC_RELAXED) : 0;
}

static void add_offset(struct timespec *ts) { shift(ts, offset()); }

int clock_gettime(clockid_t clk, struct timespec *ts) {
    if (offset_ns) {
        int r = libc_clock_gettime(clk, ts);
        if (r == 0 && is_wall_clock(clk))
            add_offset(ts);
        return r;
    }
    if (next_clock_gettime)
        return next_clock_gettime(clk, ts);
    return (int)syscall(SYS_clock_gettime, clk, ts);
}

/* Some callers pass a null `tv` (only wanting the time zone), whatever the headers say. */
#pragma GCC diagnostic ignored "-Wnonnull-compare"
int gettimeofday(struct timeval *tv, void *tz) {
    if (tz) {
        /* What glibc does: the obsolete time zone is all zeros. */
        ((int *)tz)[0] = 0;
        ((int *)tz)[1] = 0;
    }
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    if (clk == CLOCK_MONOTONIC || clk == CLOCK_MONOTONIC_RAW || clk == CLOCK_BOOTTIME ||
        !next_clock_nanosleep) {
        long r = syscall(SYS_clock_nanosleep, clk, flags, req, rem);
        return r == -1 ? errno : 0;
    }
    return next_clock_nanosleep(clk, flags, req, rem);
}

/*
 * Waits with an absolute deadline on a chosen clock (glibc 2.30+), which libfaketime 0.9.10
 * does not intercept: a deadline on the faked wall clock is turned back into a real one.
 */
#define NEXT(name) static __typeof__(name) *next = 0; \
    if (!next) next = (__typeof__(name) *)dlsym(RTLD_NEXT, #name); \
    if (!next) return ENOSYS;

static const struct timespec *real_deadline(clockid_t clk, const struct timespec *abs,
                                            struct timespec *buf) {
    if (!abs || !offset_ns || !is_wall_clock(clk))
        return abs;
    *buf = *abs;
    shift(buf, -offset());
    return buf;
}

#include <pthread.h>
#include <semaphore.h>

int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                           const struct timespec *abs) {
    NEXT(pthread_cond_clockwait);
    struct timespec buf;
    return next(c, m, clk, real_deadline(clk, abs, &buf));
}

int sem_clockwait(sem_t *s, clockid_t clk, const struct timespec *abs) {
    NEXT(sem_clockwait);
    struct timespec buf;
    return next(s, clk, real_deadline(clk, abs, &buf));
}

int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clk, const struct timespec *abs) {
    NEXT(pthread_mutex_clocklock);
    struct timespec buf;
    return next(m, clk, real_deadline(clk, abs, &buf));
}

int pthread_rwlock_clockrdlock(pthread_rwlock_t *l, clockid_t clk, const struct timespec *abs) {
    NEXT(pthread_rwlock_clockrdlock);
    struct timespec buf;
    return next(l, clk, real_deadline(clk, abs, &buf));
}

int pthread_rwlock_clockwrlock(pthread_rwlock_t *l, clockid_t clk, const struct timespec *abs) {
    NEXT(pthread_rwlock_clockwrlock);
    struct timespec buf;
    return next(l, clk, real_deadline(clk, abs, &buf));
}

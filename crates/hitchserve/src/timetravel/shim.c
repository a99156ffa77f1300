/*
 * hitchserve's time-travel shim: the only library preloaded into a faked service.
 *
 * What it fakes: the wall clocks (CLOCK_REALTIME and its _COARSE, _ALARM and TAI kin). The
 * offset is 8 bytes of shared memory that hitchserve writes (HITCHSERVE_CLOCK_OFFSET, mapped
 * read-only at start-up): a jump is seen on the very next read, and a read costs no system
 * call. Monotonic clocks are never faked.
 *  - Reads add the offset: clock_gettime, gettimeofday, time, timespec_get, ftime.
 *  - Absolute deadlines on a wall clock are the faked clock's: they have the offset taken
 *    off before the kernel sees them, so a wait lasts what the caller computed (a deadline
 *    of "faked now + 2 s" waits 2 s, after a jump of +30 days or -3 hours alike):
 *    clock_nanosleep (TIMER_ABSTIME), pthread_cond_timedwait on a condition variable whose
 *    clock is CLOCK_REALTIME (the default), pthread_mutex_timedlock, pthread_rwlock_timed*,
 *    sem_timedwait, pthread_timedjoin_np, mq_timed*, the *clock* variants of all these with
 *    a wall clock, timer_settime and timerfd_settime with TIMER_ABSTIME on timers made on a
 *    wall clock. A deadline is converted once, when the wait starts: a jump during a wait
 *    does not move it (as under libfaketime).
 *  - Relative waits (sleep, poll, select, relative timers) are real time: nothing to do.
 *  - File times (stat, statx) are not faked. libfaketime 0.9.10, which hitchserve used to
 *    preload too, did not fake them either for any program built on glibc 2.33 or later
 *    (checked: Python's os.stat, coreutils' stat and ls show real times under it), since
 *    those call stat/fstatat/statx, not the __xstat family it wrapped.
 * Why not libfaketime any more: its start-up (loading libm, resolving some 60 symbols,
 * opening its shared memory and semaphore, reading its file) cost each exec'd process
 * about 0.2-0.5 ms, for calls that this file now covers with the same guarantees.
 *
 * Rules for every wrapper: the next definition comes from dlsym(RTLD_NEXT) (a user's own
 * preload after ours still works); no allocation; the ones POSIX lists as async-signal-safe
 * (clock_gettime, clock_nanosleep, time, timer_settime) resolve their next definition in the
 * one-time set-up (the constructor, or the first such call before it: see `set_up`) and take
 * no lock; the rest resolve lazily, once, through an atomic pointer. A deadline the kernel
 * would refuse (tv_nsec out of range) is passed on unchanged, for it to refuse; one past
 * time_t's range after the shift stays at its end ("never" stays never).
 *
 * Not faked (documented): a clock read that doesn't go through these symbols — a direct
 * system call, a function pointer taken from libc's own handle (`dlsym(libc, ...)`, Python's
 * ctypes), glibc's internal reads (syslog's timestamps) — and programs that ignore
 * LD_PRELOAD (Go, static or setuid binaries).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);
typedef int (*timer_settime_fn)(timer_t, int, const struct itimerspec *, struct itimerspec *);

static const volatile int64_t *offset_ns;
static clock_gettime_fn next_clock_gettime;
static clock_nanosleep_fn next_clock_nanosleep;
static timer_settime_fn next_timer_settime;

/* 0: not set up; 1: being set up; 2: set up. */
static int state;
/* Set while this thread sets up: a wrapper it enters meanwhile (from a signal handler) must
 * not wait for itself. */
static __thread int setting_up;

/*
 * Set up once: the next definitions and the offset's mapping. Run by our constructor, and
 * also by the first call of a wrapper made before it: the loader runs the constructors of a
 * program's own libraries before a preloaded one's, and those may read the clock. A thread
 * that finds another one setting up waits for it (a few microseconds, once per process);
 * 0 only for a wrapper entered from within the set-up itself (it then uses the system call).
 */
static int set_up(void) {
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) == 2)
        return 1;
    if (setting_up)
        return 0;
    setting_up = 1;
    int expected = 0;
    if (__atomic_compare_exchange_n(&state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        next_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        next_clock_nanosleep = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
        next_timer_settime = (timer_settime_fn)dlsym(RTLD_NEXT, "timer_settime");
        const char *path = getenv("HITCHSERVE_CLOCK_OFFSET");
        if (path && next_clock_gettime) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                void *p = mmap(0, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (p != MAP_FAILED)
                    offset_ns = (const volatile int64_t *)p;
            }
        }
        __atomic_store_n(&state, 2, __ATOMIC_RELEASE);
    } else {
        while (__atomic_load_n(&state, __ATOMIC_ACQUIRE) != 2)
            sched_yield();
    }
    setting_up = 0;
    return 1;
}

__attribute__((constructor)) static void hitchserve_shim_init(void) { set_up(); }

static int is_wall_clock(clockid_t clk) {
    return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE || clk == CLOCK_TAI ||
           clk == CLOCK_REALTIME_ALARM;
}

/* `ts` moved by `off` ns; a second count past time_t's range stays at its end (a deadline of
 * "never", {LONG_MAX, 0}, stays never after a jump back, rather than wrapping to the past). */
static void shift(struct timespec *ts, int64_t off) {
    int64_t ns = (int64_t)ts->tv_nsec + off % 1000000000LL;
    int64_t secs = off / 1000000000LL + ns / 1000000000LL;
    ns %= 1000000000LL;
    if (ns < 0) {
        ns += 1000000000LL;
        secs -= 1;
    }
    time_t moved;
    if (__builtin_add_overflow(ts->tv_sec, (time_t)secs, &moved)) {
        ts->tv_sec = secs > 0 ? (time_t)INT64_MAX : (time_t)INT64_MIN;
        ts->tv_nsec = secs > 0 ? 999999999L : 0;
        return;
    }
    ts->tv_sec = moved;
    ts->tv_nsec = ns;
}

/* A timespec the kernel would refuse (EINVAL): passed on as it is, for it to say so. */
static int valid(const struct timespec *ts) {
    return ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000L;
}

static int64_t offset(void) {
    return offset_ns ? __atomic_load_n((const int64_t *)offset_ns, __ATOMIC_RELAXED) : 0;
}

/* ---- Reads ---------------------------------------------------------------------------- */

int clock_gettime(clockid_t clk, struct timespec *ts) {
    if (!set_up() || !next_clock_gettime)
        return (int)syscall(SYS_clock_gettime, clk, ts);
    int r = next_clock_gettime(clk, ts);
    if (r == 0 && offset_ns && is_wall_clock(clk))
        shift(ts, offset());
    return r;
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

/* C11's; glibc's own reads the clock without going through clock_gettime's symbol. */
int timespec_get(struct timespec *ts, int base) {
    if (base != TIME_UTC || clock_gettime(CLOCK_REALTIME, ts) != 0)
        return 0;
    return base;
}

/* Obsolete (a compat symbol since glibc 2.33) but still in old binaries; <sys/timeb.h>'s
 * layout, declared here as the header is deprecated. */
struct hitchserve_timeb {
    time_t time;
    unsigned short millitm;
    short timezone;
    short dstflag;
};
int ftime(struct hitchserve_timeb *tb) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    tb->time = ts.tv_sec;
    tb->millitm = (unsigned short)(ts.tv_nsec / 1000000);
    tb->timezone = 0;
    tb->dstflag = 0;
    return 0;
}

/* ---- Absolute deadlines --------------------------------------------------------------- */

/* `abs`, a deadline on the faked `clk`, as the kernel's deadline (in `buf` if changed). */
static const struct timespec *real_deadline(clockid_t clk, const struct timespec *abs,
                                            struct timespec *buf) {
    if (!abs || !set_up() || !offset_ns || !is_wall_clock(clk) || !valid(abs))
        return abs;
    *buf = *abs;
    shift(buf, -offset());
    /* A deadline before the real epoch (one long past on a clock moved far forward) is
     * simply past: some calls refuse a negative one (EINVAL) where the caller expects
     * ETIMEDOUT. */
    if (buf->tv_sec < 0) {
        buf->tv_sec = 0;
        buf->tv_nsec = 1;
    }
    return buf;
}

/* The next definition of `name`, looked up once; ENOSYS if there is none. The lookup is
 * idempotent, so two threads racing here store the same pointer. */
#define NEXT(name)                                                                          \
    static __typeof__(name) *next_p = 0;                                                    \
    __typeof__(name) *next = __atomic_load_n(&next_p, __ATOMIC_ACQUIRE);                    \
    if (!next) {                                                                            \
        next = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                                 \
        if (!next)                                                                          \
            return ENOSYS;                                                                  \
        __atomic_store_n(&next_p, next, __ATOMIC_RELEASE);                                  \
    }

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    struct timespec buf;
    if (flags & TIMER_ABSTIME)
        req = real_deadline(clk, req, &buf);
    if (set_up() && next_clock_nanosleep)
        return next_clock_nanosleep(clk, flags, req, rem);
    long r = syscall(SYS_clock_nanosleep, clk, flags, req, rem);
    return r == -1 ? errno : 0;
}

/*
 * A condition variable's clock is an attribute fixed at init and not readable from the
 * object through any API. glibc (2.25 and later) keeps it in bit 1 of `__wrefs`
 * (nptl/pthread_cond_common.c: "Bit 1 is the clock ID (0 == CLOCK_REALTIME,
 * 1 == CLOCK_MONOTONIC)"); the field is named by the headers this is compiled against.
 */
static clockid_t cond_clock(pthread_cond_t *c) {
    unsigned int wrefs = __atomic_load_n(&c->__data.__wrefs, __ATOMIC_RELAXED);
    return (wrefs & 2) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
}

int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abs) {
    /* The current ABI's version (the old one, GLIBC_2.2.5, is the pre-2.3.2 condvar). */
    static __typeof__(pthread_cond_timedwait) *next_p = 0;
    __typeof__(pthread_cond_timedwait) *next = __atomic_load_n(&next_p, __ATOMIC_ACQUIRE);
    if (!next) {
        next = (__typeof__(pthread_cond_timedwait) *)dlvsym(RTLD_NEXT, "pthread_cond_timedwait",
                                                           "GLIBC_2.3.2");
        if (!next)
            next = (__typeof__(pthread_cond_timedwait) *)dlsym(RTLD_NEXT,
                                                              "pthread_cond_timedwait");
        if (!next)
            return ENOSYS;
        __atomic_store_n(&next_p, next, __ATOMIC_RELEASE);
    }
    struct timespec buf;
    return next(c, m, real_deadline(cond_clock(c), abs, &buf));
}

int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                           const struct timespec *abs) {
    NEXT(pthread_cond_clockwait);
    struct timespec buf;
    return next(c, m, clk, real_deadline(clk, abs, &buf));
}

int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abs) {
    NEXT(pthread_mutex_timedlock);
    struct timespec buf;
    return next(m, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clk, const struct timespec *abs) {
    NEXT(pthread_mutex_clocklock);
    struct timespec buf;
    return next(m, clk, real_deadline(clk, abs, &buf));
}

int pthread_rwlock_timedrdlock(pthread_rwlock_t *l, const struct timespec *abs) {
    NEXT(pthread_rwlock_timedrdlock);
    struct timespec buf;
    return next(l, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int pthread_rwlock_timedwrlock(pthread_rwlock_t *l, const struct timespec *abs) {
    NEXT(pthread_rwlock_timedwrlock);
    struct timespec buf;
    return next(l, real_deadline(CLOCK_REALTIME, abs, &buf));
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

int pthread_timedjoin_np(pthread_t t, void **ret, const struct timespec *abs) {
    NEXT(pthread_timedjoin_np);
    struct timespec buf;
    return next(t, ret, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int pthread_clockjoin_np(pthread_t t, void **ret, clockid_t clk, const struct timespec *abs) {
    NEXT(pthread_clockjoin_np);
    struct timespec buf;
    return next(t, ret, clk, real_deadline(clk, abs, &buf));
}

/* C11 threads: glibc's call its pthread twins internally, past the wrappers above. Their
 * deadlines are on TIME_UTC, the wall clock (cnd_t and mtx_t are glibc's pthread types). */
#include <threads.h>

int cnd_timedwait(cnd_t *c, mtx_t *m, const struct timespec *abs) {
    NEXT(cnd_timedwait);
    struct timespec buf;
    return next(c, m, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int mtx_timedlock(mtx_t *m, const struct timespec *abs) {
    NEXT(mtx_timedlock);
    struct timespec buf;
    return next(m, real_deadline(CLOCK_REALTIME, abs, &buf));
}

/* The semaphore and message queue calls report errors in errno, -1 returned. */
#define NEXT_ERRNO(name)                                                                    \
    static __typeof__(name) *next_p = 0;                                                    \
    __typeof__(name) *next = __atomic_load_n(&next_p, __ATOMIC_ACQUIRE);                    \
    if (!next) {                                                                            \
        next = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                                 \
        if (!next) {                                                                        \
            errno = ENOSYS;                                                                 \
            return -1;                                                                      \
        }                                                                                   \
        __atomic_store_n(&next_p, next, __ATOMIC_RELEASE);                                  \
    }

int sem_timedwait(sem_t *s, const struct timespec *abs) {
    NEXT_ERRNO(sem_timedwait);
    struct timespec buf;
    return next(s, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int sem_clockwait(sem_t *s, clockid_t clk, const struct timespec *abs) {
    NEXT_ERRNO(sem_clockwait);
    struct timespec buf;
    return next(s, clk, real_deadline(clk, abs, &buf));
}

ssize_t mq_timedreceive(mqd_t q, char *msg, size_t len, unsigned int *prio,
                        const struct timespec *abs) {
    NEXT_ERRNO(mq_timedreceive);
    struct timespec buf;
    return next(q, msg, len, prio, real_deadline(CLOCK_REALTIME, abs, &buf));
}

int mq_timedsend(mqd_t q, const char *msg, size_t len, unsigned int prio,
                 const struct timespec *abs) {
    NEXT_ERRNO(mq_timedsend);
    struct timespec buf;
    return next(q, msg, len, prio, real_deadline(CLOCK_REALTIME, abs, &buf));
}

/* ---- Timers --------------------------------------------------------------------------- */

/*
 * A POSIX timer's clock can't be read back from it: the timers made on a wall clock are
 * remembered here, in a fixed table (no allocation; lock-free, so timer_settime stays
 * async-signal-safe), which belongs to one process: a child after fork() has none of its
 * parent's timers (and numbers its own from 0 again), so it starts with an empty table. A
 * timer the table could not hold (more than WALL_TIMERS on wall clocks alive at once) keeps
 * real absolute deadlines.
 */
#define WALL_TIMERS 64
static timer_t wall_timers[WALL_TIMERS];
static unsigned char wall_timer_used[WALL_TIMERS];
/* The process the table is about. */
static pid_t table_pid;

/* Make the table this process's: emptied in a child after fork(). */
static void own_table(void) {
    pid_t me = getpid();
    if (__atomic_load_n(&table_pid, __ATOMIC_ACQUIRE) == me)
        return;
    for (int i = 0; i < WALL_TIMERS; i++)
        __atomic_store_n(&wall_timer_used[i], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&table_pid, me, __ATOMIC_RELEASE);
}

int timer_create(clockid_t clk, struct sigevent *sev, timer_t *id) {
    NEXT_ERRNO(timer_create);
    int r = next(clk, sev, id);
    if (r == 0 && is_wall_clock(clk)) {
        own_table();
        for (int i = 0; i < WALL_TIMERS; i++) {
            unsigned char free_slot = 0;
            /* Claimed as 1 (id not yet written: never matched), published as 2. */
            if (__atomic_compare_exchange_n(&wall_timer_used[i], &free_slot, 1, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                __atomic_store_n(&wall_timers[i], *id, __ATOMIC_RELEASE);
                __atomic_store_n(&wall_timer_used[i], 2, __ATOMIC_RELEASE);
                break;
            }
        }
    }
    return r;
}

static int wall_timer_slot(timer_t id) {
    if (__atomic_load_n(&table_pid, __ATOMIC_ACQUIRE) != getpid())
        return -1;
    for (int i = 0; i < WALL_TIMERS; i++)
        if (__atomic_load_n(&wall_timer_used[i], __ATOMIC_ACQUIRE) == 2 &&
            __atomic_load_n(&wall_timers[i], __ATOMIC_ACQUIRE) == id)
            return i;
    return -1;
}

int timer_delete(timer_t id) {
    NEXT_ERRNO(timer_delete);
    int slot = wall_timer_slot(id);
    if (slot >= 0)
        __atomic_store_n(&wall_timer_used[slot], 0, __ATOMIC_RELEASE);
    return next(id);
}

static const struct itimerspec *real_itimer(clockid_t clk, const struct itimerspec *in,
                                            struct itimerspec *buf) {
    if (!in || !set_up() || !offset_ns || !is_wall_clock(clk) || !valid(&in->it_value))
        return in;
    /* An all-zero it_value disarms the timer: not a deadline. */
    if (in->it_value.tv_sec == 0 && in->it_value.tv_nsec == 0)
        return in;
    *buf = *in;
    shift(&buf->it_value, -offset());
    /* As in real_deadline; not zero, which would disarm the timer. */
    if (buf->it_value.tv_sec < 0) {
        buf->it_value.tv_sec = 0;
        buf->it_value.tv_nsec = 1;
    }
    return buf;
}

int timer_settime(timer_t id, int flags, const struct itimerspec *val, struct itimerspec *old) {
    if (!set_up() || !next_timer_settime) {
        errno = ENOSYS;
        return -1;
    }
    struct itimerspec buf;
    if ((flags & TIMER_ABSTIME) && wall_timer_slot(id) >= 0)
        val = real_itimer(CLOCK_REALTIME, val, &buf);
    return next_timer_settime(id, flags, val, old);
}

/*
 * A timerfd's clock, from the kernel itself (/proc/self/fdinfo/N, "clockid:"): right for a
 * descriptor duplicated, passed over a socket, inherited, or reusing a closed one's number.
 * Read only for an absolute deadline; -1 if it can't be read (then the deadline stays real).
 */
static clockid_t timerfd_clock(int fd) {
    char path[40] = "/proc/self/fdinfo/";
    char digits[12];
    int n = 0;
    unsigned int v = (unsigned int)fd;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < (int)sizeof digits);
    int at = 18;
    while (n)
        path[at++] = digits[--n];
    path[at] = 0;
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return -1;
    char buf[512];
    ssize_t got = read(f, buf, sizeof buf - 1);
    close(f);
    if (got <= 0)
        return -1;
    buf[got] = 0;
    const char *p = strstr(buf, "\nclockid:");
    if (!p)
        return -1;
    p += 9;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    int clk = 0;
    while (*p >= '0' && *p <= '9')
        clk = clk * 10 + (*p++ - '0');
    return (clockid_t)clk;
}

int timerfd_settime(int fd, int flags, const struct itimerspec *val, struct itimerspec *old) {
    NEXT_ERRNO(timerfd_settime);
    struct itimerspec buf;
    if ((flags & TFD_TIMER_ABSTIME) && fd >= 0 && set_up() && offset_ns) {
        clockid_t clk = timerfd_clock(fd);
        if (clk >= 0)
            val = real_itimer(clk, val, &buf);
    }
    return next(fd, flags, val, old);
}

/* Waits on absolute deadlines computed from the (faked) wall clock, WAIT_MS ahead, with each
 * API that takes one; prints one JSON line per wait: did it time out, and was the faked
 * clock past the deadline when it returned (an early return after a jump back: false; a
 * deadline not converted after a jump forward: the wait hangs). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 300

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t wheld = PTHREAD_RWLOCK_INITIALIZER;

static pthread_barrier_t holding;

/* Holds `held` and `wheld` for ever, so the timed lock calls below must time out. */
static void *holder(void *arg) {
    (void)arg;
    pthread_mutex_lock(&held);
    pthread_rwlock_wrlock(&wheld);
    pthread_barrier_wait(&holding);
    for (;;)
        pause();
    return 0;
}

static struct timespec deadline(clockid_t clk) {
    struct timespec t;
    clock_gettime(clk, &t);
    t.tv_nsec += WAIT_MS * 1000000L;
    t.tv_sec += t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    return t;
}

static int reached(clockid_t clk, struct timespec d) {
    struct timespec now;
    clock_gettime(clk, &now);
    return now.tv_sec > d.tv_sec || (now.tv_sec == d.tv_sec && now.tv_nsec >= d.tv_nsec);
}

static void report(long round, const char *what, int timed_out, clockid_t clk, struct timespec d) {
    printf("{\"round\": %ld, \"call\": \"%s\", \"timed_out\": %s, \"reached\": %s, \"t\": %lld}\n",
           round, what, timed_out ? "true" : "false", reached(clk, d) ? "true" : "false",
           (long long)d.tv_sec);
    fflush(stdout);
}

int main(void) {
    pthread_barrier_init(&holding, 0, 2);
    pthread_t h;
    pthread_create(&h, 0, holder, 0);
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER, mono_cond;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&mono_cond, &attr);
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    sem_t sem;
    sem_init(&sem, 0, 0);
    sigset_t alarm_set;
    sigemptyset(&alarm_set);
    sigaddset(&alarm_set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &alarm_set, 0);
    struct sigevent sev = {0};
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    timer_t timer;
    timer_create(CLOCK_REALTIME, &sev, &timer);
    int tfd = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
    pthread_barrier_wait(&holding);
    printf("READY\n");
    fflush(stdout);
    struct timespec d;
    int r;
    for (long round = 0;; round++) {
        pthread_mutex_lock(&m);
        d = deadline(CLOCK_REALTIME);
        r = pthread_cond_timedwait(&cond, &m, &d);
        pthread_mutex_unlock(&m);
        report(round, "pthread_cond_timedwait", r == ETIMEDOUT, CLOCK_REALTIME, d);

        pthread_mutex_lock(&m);
        d = deadline(CLOCK_MONOTONIC);
        r = pthread_cond_timedwait(&mono_cond, &m, &d);
        pthread_mutex_unlock(&m);
        report(round, "pthread_cond_timedwait_monotonic", r == ETIMEDOUT, CLOCK_MONOTONIC, d);

        d = deadline(CLOCK_REALTIME);
        r = sem_timedwait(&sem, &d);
        report(round, "sem_timedwait", r == -1 && errno == ETIMEDOUT, CLOCK_REALTIME, d);

        d = deadline(CLOCK_REALTIME);
        r = pthread_mutex_timedlock(&held, &d);
        report(round, "pthread_mutex_timedlock", r == ETIMEDOUT, CLOCK_REALTIME, d);

        d = deadline(CLOCK_REALTIME);
        r = pthread_rwlock_timedrdlock(&wheld, &d);
        report(round, "pthread_rwlock_timedrdlock", r == ETIMEDOUT, CLOCK_REALTIME, d);

        d = deadline(CLOCK_REALTIME);
        do
            r = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &d, 0);
        while (r == EINTR);
        report(round, "clock_nanosleep", r == 0, CLOCK_REALTIME, d);

        d = deadline(CLOCK_REALTIME);
        struct itimerspec its = {{0, 0}, d};
        r = timer_settime(timer, TIMER_ABSTIME, &its, 0);
        int sig = r == 0 ? sigwaitinfo(&alarm_set, 0) : -1;
        report(round, "timer_settime", sig == SIGUSR1, CLOCK_REALTIME, d);

        d = deadline(CLOCK_REALTIME);
        its.it_value = d;
        r = timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, 0);
        uint64_t expirations = 0;
        ssize_t got = r == 0 ? read(tfd, &expirations, sizeof expirations) : -1;
        report(round, "timerfd_settime", got == 8 && expirations >= 1, CLOCK_REALTIME, d);
    }
}

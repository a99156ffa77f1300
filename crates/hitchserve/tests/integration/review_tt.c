/* Review of the time-travel shim: each mode loops, one JSON line per round, with the faked
 * wall clock ("t") so a test can pick a round that ran wholly after a jump. Rounds are paced
 * by a relative 50 ms nanosleep (real time: untouched by the shim). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double faked_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void pace(void) {
    struct timespec d = {0, 50 * 1000000L};
    nanosleep(&d, 0);
}

/* "now + ms" on the (never faked) monotonic clock, as an absolute timer value. */
static struct itimerspec mono_in(long ms) {
    struct itimerspec v = {0};
    clock_gettime(CLOCK_MONOTONIC, &v.it_value);
    v.it_value.tv_nsec += ms * 1000000L;
    v.it_value.tv_sec += v.it_value.tv_nsec / 1000000000L;
    v.it_value.tv_nsec %= 1000000000L;
    return v;
}

static double secs(struct timespec t) { return (double)t.tv_sec + t.tv_nsec / 1e9; }

static void report(const char *mode, const char *result, double remaining) {
    printf("{\"mode\": \"%s\", \"t\": %.3f, \"result\": \"%s\", \"remaining\": %.3f}\n", mode,
           faked_now(), result, remaining);
    fflush(stdout);
}

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int flag;

static void *signaller(void *a) {
    (void)a;
    /* Only gets the mutex once the waiter is in its wait (or done). */
    pthread_mutex_lock(&m);
    flag = 1;
    pthread_cond_signal(&c);
    pthread_mutex_unlock(&m);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    if (!strcmp(mode, "fork_timer")) {
        /* A wall-clock POSIX timer in the parent (the process's first: kernel id 0). */
        timer_t wall;
        if (timer_create(CLOCK_REALTIME, &none, &wall) != 0)
            return 1;
    }
    printf("READY\n");
    fflush(stdout);
    for (;;) {
        if (!strcmp(mode, "fork_timer")) {
            /* A forked child's first timer, on CLOCK_MONOTONIC, has the same id as the
             * parent's wall-clock one (timers are not inherited; ids restart at 0). */
            pid_t pid = fork();
            if (pid == 0) {
                timer_t mono;
                timer_create(CLOCK_MONOTONIC, &none, &mono);
                struct itimerspec v = mono_in(300), cur;
                timer_settime(mono, TIMER_ABSTIME, &v, 0);
                timer_gettime(mono, &cur);
                report(mode, "set", secs(cur.it_value));
                _exit(0);
            }
            waitpid(pid, 0, 0);
        } else if (!strcmp(mode, "dup_timerfd")) {
            /* A monotonic timerfd dup'd onto the number a closed wall-clock timerfd had. */
            int mono = timerfd_create(CLOCK_MONOTONIC, 0);
            int wall = timerfd_create(CLOCK_REALTIME, 0);
            close(wall);
            int d = dup(mono);
            struct itimerspec v = mono_in(300), cur;
            timerfd_settime(d, TFD_TIMER_ABSTIME, &v, 0);
            timerfd_gettime(d, &cur);
            report(mode, d == wall ? "same_number" : "other_number", secs(cur.it_value));
            close(d);
            close(mono);
        } else if (!strcmp(mode, "forever")) {
            /* "No deadline", said as the largest one; woken by a signal. */
            pthread_mutex_lock(&m);
            flag = 0;
            pthread_t t;
            pthread_create(&t, 0, signaller, 0);
            struct timespec forever = {.tv_sec = LONG_MAX, .tv_nsec = 0};
            int r = 0;
            while (!flag && r == 0)
                r = pthread_cond_timedwait(&c, &m, &forever);
            pthread_mutex_unlock(&m);
            pthread_join(t, 0);
            report(mode, r == 0 ? "signalled" : strerrorname_np(r), 0);
        } else if (!strcmp(mode, "invalid_nsec")) {
            /* An absolute deadline with tv_nsec out of range: EINVAL, not a sleep. */
            struct timespec d;
            clock_gettime(CLOCK_REALTIME, &d);
            d.tv_nsec = 1000000000L;
            int r = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &d, 0);
            report(mode, r == 0 ? "slept" : strerrorname_np(r), 0);
        } else {
            return 2;
        }
        pace();
    }
}

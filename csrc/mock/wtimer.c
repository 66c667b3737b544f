/* Websocket timers (keepalive, ping, assign window, reconnect grace) in a binary
 * min-heap owned by the emulator, served by a single lws_sul.
 *
 * libwebsockets keeps its timers in one sorted list (O(n) per insert); with three
 * timers per socket that list saturated a core at 10,000 sockets. Here a schedule,
 * reschedule or cancel is O(log n), and the one lws timer is moved only when the
 * earliest deadline gets earlier. Timers never fire early. Expiries are served at
 * most once per gap, a deadline falling sooner after the previous service waiting
 * for the next: the gap grows with the number of timers (WT_GAP_PER_TIMER_US each,
 * at most WT_GAP_MAX_US), so a few sessions get their timers to the millisecond
 * while 10,000 share a few wakeups of the event loop per second (each poll() walks
 * every socket: about 7 ms at 10,000). */
#include "mock.h"

#include <stdlib.h>

#define WT_GAP_PER_TIMER_US 4
#define WT_GAP_MAX_US 100000

static int wt_less(const wtimer_t *a, const wtimer_t *b) { return a->due_us < b->due_us; }

static void wt_place(size_t i, wtimer_t *t)
{
    M->wt_heap[i] = t;
    t->idx = i + 1;
}

static void wt_up(size_t i)
{
    wtimer_t *t = M->wt_heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!wt_less(t, M->wt_heap[p]))
            break;
        wt_place(i, M->wt_heap[p]);
        i = p;
    }
    wt_place(i, t);
}

static void wt_down(size_t i)
{
    size_t n = M->wt_n;
    wtimer_t *t = M->wt_heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const wtimer_t *best = t;
        if (l < n && wt_less(M->wt_heap[l], best)) {
            m = l;
            best = M->wt_heap[l];
        }
        if (l + 1 < n && wt_less(M->wt_heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        wt_place(i, M->wt_heap[m]);
        i = m;
    }
    wt_place(i, t);
}

static void wt_remove_at(size_t i)
{
    wtimer_t *t = M->wt_heap[i];
    t->idx = 0;
    M->wt_n--;
    if (i == M->wt_n)
        return;
    wt_place(i, M->wt_heap[M->wt_n]);
    if (i > 0 && wt_less(M->wt_heap[i], M->wt_heap[(i - 1) / 2]))
        wt_up(i);
    else
        wt_down(i);
}

static void wt_service(lws_sorted_usec_list_t *sul);

/* (re)arms the lws timer for the earliest deadline, no sooner than the gap after the
 * previous service. An armed timer that is due no later is left alone: firing early
 * only finds nothing due. */
static void wt_arm(void)
{
    if (!M->wt_n || !M->ctx || M->wt_serving)
        return;
    int64_t gap = M->wt_n < WT_GAP_MAX_US / WT_GAP_PER_TIMER_US
                      ? (int64_t)M->wt_n * WT_GAP_PER_TIMER_US
                      : WT_GAP_MAX_US;
    int64_t due = M->wt_heap[0]->due_us;
    if (due < M->wt_served_us + gap)
        due = M->wt_served_us + gap;
    if (M->wt_armed && M->wt_armed_us <= due)
        return;
    int64_t delay = due - mono_us();
    if (delay < 0)
        delay = 0;
    M->wt_armed = 1;
    M->wt_armed_us = due;
    lws_sul_schedule(M->ctx, 0, &M->wt_sul, wt_service, (lws_usec_t)delay);
}

static void wt_service(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    M->wt_armed = 0;
    M->wt_serving = 1;
    int64_t now = mono_us();
    M->wt_served_us = now;
    /* each expiry is popped before its callback runs, which may schedule again
     * (a repeating timer) or schedule or cancel any other timer */
    while (M->wt_n && M->wt_heap[0]->due_us <= now) {
        wtimer_t *t = M->wt_heap[0];
        wt_remove_at(0);
        t->cb(t);
    }
    M->wt_serving = 0;
    wt_arm();
}

void wt_schedule(wtimer_t *t, void (*cb)(wtimer_t *), int64_t delay_us)
{
    if (delay_us < 0)
        delay_us = 0;
    t->cb = cb;
    t->due_us = mono_us() + delay_us;
    if (t->idx) {
        size_t i = t->idx - 1;
        if (i > 0 && wt_less(t, M->wt_heap[(i - 1) / 2]))
            wt_up(i);
        else
            wt_down(i);
    } else {
        M->wt_heap = xgrow(M->wt_heap, M->wt_n, &M->wt_cap, 1024, sizeof *M->wt_heap);
        M->wt_heap[M->wt_n++] = t;
        wt_up(M->wt_n - 1);
    }
    wt_arm();
}

void wt_cancel(wtimer_t *t)
{
    if (t->idx)
        wt_remove_at(t->idx - 1);
}

void wt_free_all(void)
{
    while (M->wt_n)
        wt_remove_at(M->wt_n - 1);
    if (M->wt_armed && M->ctx)
        lws_sul_cancel(&M->wt_sul);
    M->wt_armed = 0;
    free(M->wt_heap);
    M->wt_heap = NULL;
    M->wt_cap = 0;
}

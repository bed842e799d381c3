/* clock.h — the one clock graft times things with. */
#ifndef GRAFT_CORE_CLOCK_H
#define GRAFT_CORE_CLOCK_H

/* Seconds on CLOCK_MONOTONIC (an arbitrary origin: subtract two readings). */
double graft_now_seconds(void);

#endif

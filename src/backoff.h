/* Reconnect pacing for one connection: exponential backoff with jitter,
 * capped, and "log once per state change": a failure is worth a log line
 * when its reason differs from the previous one, not on every attempt. */
#ifndef SLUICE_BACKOFF_H
#define SLUICE_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

#define BACKOFF_BASE_MS 100
#define BACKOFF_CAP_MS 5000

struct backoff {
	int attempts;	   /* failures since the last success */
	int64_t since_ms;  /* when the first of them happened */
	int64_t retry_ms;  /* do not try again before this */
	unsigned seed;	   /* jitter; per connection, no shared state */
	char reason[256];  /* the last reason logged */
};

void backoff_init(struct backoff *b, unsigned seed);
/* A failed attempt at now_ms: sets retry_ms (half the capped exponential
 * delay plus a random part of the other half, so shards that failed
 * together do not retry in step) and returns true when `reason` differs from
 * the last one logged, i.e. when the caller should log it. */
bool backoff_failed(struct backoff *b, int64_t now_ms, const char *reason);
/* Connected: forget the failures. Returns how many there were. */
int backoff_succeeded(struct backoff *b);

#endif

/* Backoff; see backoff.h. */
#include "backoff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void backoff_init(struct backoff *b, unsigned seed) { *b = (struct backoff){.seed = seed}; }

bool backoff_failed(struct backoff *b, int64_t now_ms, const char *reason)
{
	if (b->attempts == 0)
		b->since_ms = now_ms;
	int shift = b->attempts < 16 ? b->attempts : 16;
	int64_t delay = (int64_t)BACKOFF_BASE_MS << shift;
	if (delay > BACKOFF_CAP_MS)
		delay = BACKOFF_CAP_MS;
	delay = delay / 2 + rand_r(&b->seed) % (delay / 2 + 1);
	b->retry_ms = now_ms + delay;
	b->attempts++;
	if (strcmp(b->reason, reason) == 0)
		return false;
	snprintf(b->reason, sizeof(b->reason), "%s", reason);
	return true;
}

int backoff_succeeded(struct backoff *b)
{
	int n = b->attempts;
	b->attempts = 0;
	b->retry_ms = 0;
	b->reason[0] = '\0';
	return n;
}

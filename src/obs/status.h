/* The status line: committed rows, rate and queue depth, summed over the
 * shards' counters by the main thread. */
#ifndef SLUICE_OBS_STATUS_H
#define SLUICE_OBS_STATUS_H

#include <stdbool.h>
#include <stdint.h>

#include "shard.h"

struct status {
	bool tty;	     /* rewrite one line in place */
	int64_t start_ms, last_ms;
	uint64_t last_rows;
};

void status_init(struct status *st, bool tty, int64_t now_ms);
/* Print one line; `final` ends the in-place line and reports the average. */
void status_print(struct status *st, struct shard *const *shards, int n, int64_t now_ms,
		  bool final);

#endif

/* Status line formatting. On a TTY the line is redrawn in place; elsewhere
 * each interval is one log line, so long runs leave a readable record. */
#include "obs/status.h"

#include <stdio.h>

#include "log.h"

void status_init(struct status *st, bool tty, int64_t now_ms)
{
	*st = (struct status){.tty = tty, .start_ms = now_ms, .last_ms = now_ms};
}

void status_print(struct status *st, struct shard *const *shards, int n, int64_t now_ms,
		  bool final)
{
	uint64_t rows = 0, bytes = 0;
	int64_t ready = -1;
	for (int i = 0; i < n; i++) {
		const struct shard_stats *ss = shard_stats(shards[i]);
		rows += atomic_load_explicit(&ss->rows, memory_order_relaxed);
		bytes += atomic_load_explicit(&ss->bytes, memory_order_relaxed);
		int64_t r = atomic_load_explicit(&ss->ready, memory_order_relaxed);
		if (r >= 0 && (ready < 0 || r < ready))
			ready = r; /* every shard polls the same queue: show the lowest count */
	}
	double secs = (double)(now_ms - st->last_ms) / 1000.0;
	double total = (double)(now_ms - st->start_ms) / 1000.0;
	double rate = final ? (total > 0 ? (double)rows / total : 0)
			    : (secs > 0 ? (double)(rows - st->last_rows) / secs : 0);
	char depth[32];
	if (ready >= 0)
		snprintf(depth, sizeof(depth), "%lld", (long long)ready);
	else
		snprintf(depth, sizeof(depth), "?");

	if (final) {
		if (st->tty)
			fputs("\r\033[K", stderr);
		log_info("committed %llu rows (%.1f MiB of COPY data) in %.1f s: %.0f rows/s",
			 (unsigned long long)rows, (double)bytes / 1048576.0, total, rate);
	} else if (st->tty) {
		fprintf(stderr, "\r\033[Ksluice: %llu rows committed | %.0f msgs/s | queue %s ready | %.0f s",
			(unsigned long long)rows, rate, depth, total);
		fflush(stderr);
	} else {
		log_info("status: %llu rows committed, %.0f msgs/s, queue %s ready",
			 (unsigned long long)rows, rate, depth);
	}
	st->last_ms = now_ms;
	st->last_rows = rows;
}

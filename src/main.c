/* sluice: drains a RabbitMQ queue into a PostgreSQL table with COPY.
 * The main thread parses the configuration, prepares the table, starts one
 * shard per CPU and then only waits: for signals, for shards that finish,
 * and for the next status line. */
#include <errno.h>
#include <libpq-fe.h>
#ifdef SLUICE_STATIC
#include <nss.h>
#endif
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "obs/health.h"
#include "obs/status.h"
#include "pg/connect.h"
#include "pg/schema.h"
#include "shard.h"
#include "version.h"

/* The signals the main thread takes (with sigtimedwait; blocked elsewhere). */
static void main_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGUSR1);
}

enum prepared { PREPARED, PREPARE_FAILED, PREPARE_STOPPED };

/* Prepare the tables once, before any shard connects. While PostgreSQL
 * cannot be reached, wait for it with backoff; a signal ends the wait. */
static enum prepared prepare_tables(const struct config *cfg, struct sql_plan *plan)
{
	struct backoff bo;
	sigset_t set;
	main_signals(&set);
	backoff_init(&bo, (unsigned)clock_wall_us());
	for (;;) {
		enum pg_class cls;
		char why[512];
		PGconn *pg = pg_connect(cfg, &cls, why, sizeof(why));
		if (pg) {
			bool ok = schema_prepare(pg, cfg, plan);
			PQfinish(pg);
			return ok ? PREPARED : PREPARE_FAILED;
		}
		if (cls == PG_CONFIG) {
			log_error("PostgreSQL: %s (POSTGRES_DSN)", why);
			return PREPARE_FAILED;
		}
		int64_t now = clock_mono_ms();
		if (backoff_failed(&bo, now, why))
			log_warn("PostgreSQL: %s; waiting for it (retrying with backoff up to %d s)",
				 why, BACKOFF_CAP_MS / 1000);
		int64_t wait = bo.retry_ms - now;
		struct timespec ts = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM) {
			log_info("%s while waiting for PostgreSQL: stopping", strsignal(sig));
			return PREPARE_STOPPED;
		}
	}
}

/* The health file's line: "ok" while every shard consumes. */
static void write_health(const struct config *cfg, struct shard **shards, int n, bool stopping)
{
	if (!cfg->health_file[0])
		return;
	int consuming = 0;
	for (int i = 0; i < n; i++)
		consuming += atomic_load_explicit(&shard_stats(shards[i])->consuming,
						  memory_order_relaxed);
	char line[64];
	if (stopping)
		snprintf(line, sizeof(line), "stopping");
	else if (consuming == n)
		snprintf(line, sizeof(line), "ok");
	else
		snprintf(line, sizeof(line), "%d of %d shards consuming", consuming, n);
	int rc = health_write(cfg->health_file, line);
	if (rc < 0)
		log_warn("cannot write SLUICE_HEALTH_FILE %s: %s", cfg->health_file, strerror(-rc));
}

/* Wait for shards, signals and status ticks; returns the exit status. */
static int supervise(struct shard **shards, int n, const struct config *cfg)
{
	sigset_t set;
	main_signals(&set);

	bool tty = isatty(STDERR_FILENO);
	int64_t interval_ms = cfg->stats_interval_s * 1000;
	if (tty && interval_ms > 0)
		interval_ms = 1000;
	struct status st;
	status_init(&st, tty, clock_mono_ms());
	int64_t next_status = clock_mono_ms() + interval_ms;
	bool stopping = false, failed = false;

	for (;;) {
		int running = 0;
		for (int i = 0; i < n; i++)
			running += !shard_finished(shards[i]);
		if (running == 0)
			break;
		if (running < n && !stopping) {
			/* A shard ended on its own: an error, or --until-empty. */
			for (int i = 0; i < n; i++)
				shard_stop(shards[i]);
			stopping = true;
		}

		write_health(cfg, shards, n, stopping);
		/* Wake at least every second: the health file stays fresh. */
		int64_t wait = interval_ms > 0 ? next_status - clock_mono_ms() : 1000;
		if (wait > 1000)
			wait = 1000;
		if (wait < 0)
			wait = 0;
		struct timespec ts = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM) {
			if (stopping) {
				log_warn("second signal: exiting now; unacked messages will be "
					 "redelivered by the broker");
				_exit(1);
			}
			log_info("%s: finishing in-flight batches (at most %ld s)", strsignal(sig),
				 cfg->drain_timeout_s);
			for (int i = 0; i < n; i++)
				shard_stop(shards[i]);
			stopping = true;
		}
		if (interval_ms > 0 && clock_mono_ms() >= next_status) {
			status_print(&st, shards, n, clock_mono_ms(), false);
			next_status = clock_mono_ms() + interval_ms;
		}
	}
	status_print(&st, shards, n, clock_mono_ms(), true);
	if (cfg->health_file[0])
		unlink(cfg->health_file); /* a stopped sluice is not healthy */
	for (int i = 0; i < n; i++)
		failed |= shard_join(shards[i]) != 0;
	return failed ? 1 : 0;
}

/* A static glibc has only its built-in "files" and "dns" NSS services; any
 * other service nsswitch.conf names (distroless's "passwd: compat", a host's
 * systemd or sss) it would dlopen(), which fails in an empty root and mixes
 * two glibcs elsewhere. libpq looks up the user and HOME through passwd. */
static void nss_static_setup(void)
{
#ifdef SLUICE_STATIC
	__nss_configure_lookup("passwd", "files");
	__nss_configure_lookup("group", "files");
	__nss_configure_lookup("hosts", "files dns");
#endif
}

int main(int argc, char **argv)
{
	struct config cfg;
	char err[512];

	nss_static_setup();

	switch (config_load(&cfg, argc, argv, err, sizeof(err))) {
	case CONFIG_OK:
		if (cfg.health_check) {
			int rc = health_probe(cfg.health_file, 15);
			config_free(&cfg);
			return rc;
		}
		break;
	case CONFIG_EXIT:
		config_free(&cfg);
		return 0;
	case CONFIG_ERROR:
		fprintf(stderr, "sluice: %s\n", err);
		config_free(&cfg);
		/* Docker reserves a health check's exit status 2: a probe
		 * with a bad setting is simply unhealthy. */
		for (int i = 1; i < argc; i++)
			if (strcmp(argv[i], "--health-check") == 0)
				return 1;
		return 2;
	}

	/* Signals are taken by the main thread's sigtimedwait only; shards
	 * inherit the mask. SIGPIPE cannot happen (MSG_NOSIGNAL), but libpq
	 * writes with send() too, so ignore it outright. */
	sigset_t set;
	main_signals(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	char where[300];
	mq_url_redacted(&cfg.amqp, where, sizeof(where));
	log_info("sluice %s: queue '%s' at %s -> table %s, %ld shards, batches of %ld rows",
		 SLUICE_VERSION, cfg.queue, where, cfg.table, cfg.shards, cfg.batch_rows);

	if (cfg.dead_letter == DEAD_LETTER_REJECT)
		log_info("--dead-letter reject: rows PostgreSQL rejects go back to the broker; "
			 "without a dead-letter exchange on queue '%s' RabbitMQ drops them",
			 cfg.queue);
	struct sql_plan plan = {0}; /* freed on every path, filled only when prepared */
	enum prepared prep = prepare_tables(&cfg, &plan);
	if (prep != PREPARED) {
		sql_plan_free(&plan);
		config_free(&cfg);
		return prep == PREPARE_STOPPED ? 0 : 1;
	}

	struct shard **shards = calloc((size_t)cfg.shards, sizeof(*shards));
	int n = 0;
	while (shards && n < cfg.shards) {
		shards[n] = shard_start(n, &cfg, &plan);
		if (!shards[n])
			break;
		n++;
	}
	int rc = n == cfg.shards ? 0 : 1;
	if (rc != 0)
		for (int i = 0; i < n; i++)
			shard_stop(shards[i]);
	if (n > 0 && supervise(shards, n, &cfg) != 0)
		rc = 1;
	free(shards);
	sql_plan_free(&plan);
	config_free(&cfg);
	return rc;
}

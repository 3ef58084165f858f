/* The option table and its parser. Every option is a --flag and an
 * environment variable; defaults go through the same parser as user input,
 * and --help is generated from the same table, so the three cannot drift. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"
#include "pg/connect.h"
#include "version.h"

enum opt_kind { OPT_STR, OPT_INT, OPT_BYTES, OPT_BOOL, OPT_ENUM };

struct opt_def {
	const char *flag;
	const char *env;
	enum opt_kind kind;
	const char *def; /* NULL: required */
	long min, max;
	const char *const *choices; /* OPT_ENUM: NULL-terminated, index = value */
	size_t offset;
	const char *help;
};

static const char *const body_types[] = {"bytea", "jsonb", "text", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
/* In the order of enum loop_choice. */
static const char *const io_backends[] = {"auto", "uring", "epoll", NULL};
/* In the order of enum dead_letter_mode. */
static const char *const dead_letter_modes[] = {"table", "reject", NULL};

#define OFF(field) offsetof(struct config, field)

static const struct opt_def opts[] = {
	{"rabbitmq-url", "RABBITMQ_URL", OPT_STR, "amqp://guest:guest@localhost:5672/", 0, 0, NULL,
	 OFF(rabbitmq_url), "AMQP URI of the broker (query: heartbeat, frame_max, channel_max)"},
	{"postgres-dsn", "POSTGRES_DSN", OPT_STR, "", 0, 0, NULL, OFF(postgres_dsn),
	 "libpq connection string or URI; empty uses libpq's PG* variables"},
	{"queue", "SLUICE_QUEUE", OPT_STR, NULL, 0, 0, NULL, OFF(queue),
	 "queue to consume (must exist)"},
	{"table", "SLUICE_TABLE", OPT_STR, "", 0, 0, NULL, OFF(table),
	 "target table, optionally schema-qualified; empty = the queue's name"},
	{"shards", "SLUICE_SHARDS", OPT_INT, "0", 0, 1024, NULL, OFF(shards),
	 "shards (threads, each with its own connections); 0 = one per CPU"},
	{"prefetch", "SLUICE_PREFETCH", OPT_INT, "4000", 1, 65535, NULL, OFF(prefetch),
	 "unacked deliveries per shard (basic.qos); cover two batches"},
	{"batch-rows", "SLUICE_BATCH_ROWS", OPT_INT, "1000", 1, 1000000, NULL, OFF(batch_rows),
	 "flush a COPY batch at this many rows"},
	{"batch-bytes", "SLUICE_BATCH_BYTES", OPT_BYTES, "8MiB", 4096, 1L << 30, NULL,
	 OFF(batch_bytes), "flush a COPY batch at this many bytes (k/M/G suffixes)"},
	{"linger-ms", "SLUICE_LINGER_MS", OPT_INT, "20", 0, 60000, NULL, OFF(linger_ms),
	 "flush a batch this long after its first row, even if small"},
	{"body-type", "SLUICE_BODY_TYPE", OPT_ENUM, "bytea", 0, 0, body_types, OFF(body_type),
	 "type of the body column: bytea, jsonb or text"},
	{"dedupe-key", "SLUICE_DEDUPE_KEY", OPT_STR, "", 0, 0, NULL, OFF(dedupe_key),
	 "make redelivery harmless: message_id, header:NAME or body (its SHA-256)"},
	{"dead-letter", "SLUICE_DEAD_LETTER", OPT_ENUM, "table", 0, 0, dead_letter_modes,
	 OFF(dead_letter), "rows PostgreSQL rejects: table, or reject (to the queue's DLX)"},
	{"dead-letter-table", "SLUICE_DEAD_LETTER_TABLE", OPT_STR, "sluice_dead_letters", 0, 0,
	 NULL, OFF(dead_letter_table), "table for dead letters (created if missing)"},
	{"no-create", "SLUICE_NO_CREATE", OPT_BOOL, "false", 0, 0, NULL, OFF(no_create),
	 "never create the table; fail if it is missing"},
	{"drain-timeout", "SLUICE_DRAIN_TIMEOUT", OPT_INT, "30", 1, 3600, NULL,
	 OFF(drain_timeout_s), "seconds to finish in-flight batches after SIGTERM"},
	{"until-empty", "SLUICE_UNTIL_EMPTY", OPT_BOOL, "false", 0, 0, NULL, OFF(until_empty),
	 "exit 0 once the queue is empty and every row is committed"},
	{"stats-interval", "SLUICE_STATS_INTERVAL", OPT_INT, "10", 0, 3600, NULL,
	 OFF(stats_interval_s), "seconds between status lines; 0 = none (1 s, in place, on a TTY)"},
	{"log-level", "SLUICE_LOG_LEVEL", OPT_ENUM, "info", 0, 0, log_levels, OFF(log_level),
	 "error, warn, info or debug"},
	{"io", "SLUICE_IO", OPT_ENUM, "auto", 0, 0, io_backends, OFF(io),
	 "socket I/O: uring, epoll, or auto (io_uring, else epoll)"},
	{"health-file", "SLUICE_HEALTH_FILE", OPT_STR, "", 0, 0, NULL, OFF(health_file),
	 "rewrite this file every second: \"ok\" while every shard consumes"},
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static enum config_result fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static enum config_result fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return CONFIG_ERROR;
}

/* "8MiB", "64k", "1G", "4096": binary multiples, as the help says. */
static int parse_bytes(const char *s, long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0)
		return -1;
	long long mul = 1;
	if (*end) {
		switch (*end) {
		case 'k': case 'K': mul = 1LL << 10; break;
		case 'm': case 'M': mul = 1LL << 20; break;
		case 'g': case 'G': mul = 1LL << 30; break;
		default: return -1;
		}
		end++;
		if (strcasecmp(end, "ib") == 0 || strcasecmp(end, "b") == 0)
			end += strlen(end);
		if (*end)
			return -1;
	}
	if (v > LLONG_MAX / mul)
		return -1;
	*out = (long)(v * mul);
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"0", "false", "no", "off"};
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return *out = true, 0;
		if (strcasecmp(s, no[i]) == 0)
			return *out = false, 0;
	}
	return -1;
}

/* Set one option from text; `source` names where it came from for errors
 * ("--prefetch" or "SLUICE_PREFETCH"). Errors never quote the value: a
 * misplaced argument may be a URL or a password. */
static enum config_result opt_set(struct config *c, const struct opt_def *o,
				  const char *val, const char *source, char *err,
				  size_t errlen)
{
	void *field = (char *)c + o->offset;
	long v;
	char *end;

	switch (o->kind) {
	case OPT_STR: {
		char **dst = field;
		free(*dst);
		*dst = strdup(val);
		return CONFIG_OK;
	}
	case OPT_INT:
		errno = 0;
		v = strtol(val, &end, 10);
		if (errno || end == val || *end || v < o->min || v > o->max)
			return fail(err, errlen, "%s: not an integer from %ld to %ld", source,
				    o->min, o->max);
		*(long *)field = v;
		return CONFIG_OK;
	case OPT_BYTES:
		if (parse_bytes(val, &v) < 0 || v < o->min || v > o->max)
			return fail(err, errlen,
				    "%s: not a size from %ld to %ld bytes (k, M, G suffixes)", source,
				    o->min, o->max);
		*(long *)field = v;
		return CONFIG_OK;
	case OPT_BOOL:
		if (parse_bool(val, field) < 0)
			return fail(err, errlen, "%s: not a boolean (true or false)", source);
		return CONFIG_OK;
	case OPT_ENUM:
		for (long i = 0; o->choices[i]; i++)
			if (strcmp(val, o->choices[i]) == 0)
				return *(long *)field = i, CONFIG_OK;
		char list[128] = "";
		for (long i = 0; o->choices[i]; i++)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
				 i ? ", " : "", o->choices[i]);
		return fail(err, errlen, "%s: must be one of %s", source, list);
	}
	return fail(err, errlen, "%s: internal error: unknown option kind", source);
}

void config_usage(FILE *out)
{
	fprintf(out,
		"usage: sluice [options]\n"
		"Drains a RabbitMQ queue into a PostgreSQL table with COPY; a message\n"
		"is acked only after its row has committed.\n\n"
		"Each option is a flag and an environment variable (the flag wins).\n\n");
	for (size_t i = 0; i < NOPTS; i++) {
		const struct opt_def *o = &opts[i];
		char left[64];
		snprintf(left, sizeof(left), "--%s%s", o->flag,
			 o->kind == OPT_BOOL ? "" : " VALUE");
		fprintf(out, "  %-26s %s\n  %-26s %s", left, o->help, "", o->env);
		if (!o->def)
			fprintf(out, " (required)\n");
		else if (!o->def[0])
			fprintf(out, " (default: empty)\n");
		else
			fprintf(out, " (default: %s)\n", o->def);
	}
	fprintf(out, "  %-26s %s\n  %-26s %s\n  %-26s %s\n", "--help", "show this text and exit",
		"--version", "show the version and the libraries' versions and exit",
		"--health-check", "exit 0 if the health file says ok and is fresh, else 1");
}

static long online_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? n : 1;
}

static enum config_result config_finish(struct config *c, char *err, size_t errlen)
{
	if (c->health_check)
		return CONFIG_OK; /* the probe needs only the health file */
	if (!c->queue || !c->queue[0])
		return fail(err, errlen, "SLUICE_QUEUE (--queue) is required: the queue to consume");
	if (strlen(c->queue) > 255)
		return fail(err, errlen, "SLUICE_QUEUE: a queue name is at most 255 bytes");
	if (!c->table[0]) {
		free(c->table);
		c->table = strdup(c->queue);
	}
	if (!c->dead_letter_table[0])
		return fail(err, errlen, "SLUICE_DEAD_LETTER_TABLE (--dead-letter-table) is empty");
	if (!c->dedupe_key[0])
		c->dedupe = DEDUPE_NONE;
	else if (strcmp(c->dedupe_key, "message_id") == 0)
		c->dedupe = DEDUPE_MESSAGE_ID;
	else if (strcmp(c->dedupe_key, "body") == 0)
		c->dedupe = DEDUPE_BODY;
	else if (strncmp(c->dedupe_key, "header:", 7) == 0 && c->dedupe_key[7])
		c->dedupe = DEDUPE_HEADER, c->dedupe_header = c->dedupe_key + 7;
	else
		return fail(err, errlen, "SLUICE_DEDUPE_KEY (--dedupe-key): must be message_id, "
					 "body or header:NAME");
	if (mq_url_parse(c->rabbitmq_url, &c->amqp, err, errlen) < 0)
		return CONFIG_ERROR;
	if (pg_dsn_check(c->postgres_dsn, err, errlen) < 0)
		return CONFIG_ERROR;
	if (c->shards == 0)
		c->shards = online_cpus();
	log_threshold = (enum log_level)c->log_level;
	return CONFIG_OK;
}

enum config_result config_load(struct config *c, int argc, char **argv, char *err,
			       size_t errlen)
{
	struct option lopts[NOPTS + 4];
	enum config_result rc;

	*c = (struct config){0};
	for (size_t i = 0; i < NOPTS; i++) {
		const struct opt_def *o = &opts[i];
		const char *env = getenv(o->env);
		if (o->def && (rc = opt_set(c, o, o->def, o->flag, err, errlen)) != CONFIG_OK)
			return rc;
		if (env && (rc = opt_set(c, o, env, o->env, err, errlen)) != CONFIG_OK)
			return rc;
		lopts[i] = (struct option){o->flag,
					   o->kind == OPT_BOOL ? no_argument : required_argument,
					   NULL, (int)i};
	}
	lopts[NOPTS] = (struct option){"help", no_argument, NULL, 'h'};
	lopts[NOPTS + 1] = (struct option){"version", no_argument, NULL, 'V'};
	lopts[NOPTS + 2] = (struct option){"health-check", no_argument, NULL, 'H'};
	lopts[NOPTS + 3] = (struct option){0};

	optind = 0; /* 0, not 1: glibc then also forgets its place in a "-xy" */
	opterr = 0;
	for (;;) {
		int idx = getopt_long(argc, argv, "+", lopts, NULL);
		if (idx == -1)
			break;
		if (idx == 'h') {
			config_usage(stdout);
			return CONFIG_EXIT;
		}
		if (idx == 'V') {
			version_print(stdout);
			return CONFIG_EXIT;
		}
		if (idx == 'H') {
			c->health_check = true;
			continue;
		}
		if (idx == '?' || idx == ':') {
			/* A printable optopt is a short option (sluice has none);
			 * long options' vals are table indices, below ' '. */
			if (optopt >= ' ' && optopt <= '~')
				return fail(err, errlen, "-%c: unknown option (see --help)", optopt);
			/* Name the option only: what follows it ("=URL", or
			 * anything pasted into the same argument) may be a secret. */
			const char *arg = argv[optind - 1];
			int len = (int)strspn(arg, "-_abcdefghijklmnopqrstuvwxyz"
						   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
			return fail(err, errlen, "%.*s: unknown option or missing value (see --help)",
				    len, arg);
		}
		const struct opt_def *o = &opts[idx];
		char source[64];
		snprintf(source, sizeof(source), "--%s", o->flag);
		rc = opt_set(c, o, o->kind == OPT_BOOL ? "true" : optarg, source, err, errlen);
		if (rc != CONFIG_OK)
			return rc;
	}
	if (optind < argc) /* not quoted: a stray argument may be a URL with a password */
		return fail(err, errlen,
			    "unexpected argument in position %d: sluice takes only --options "
			    "(see --help)", optind);
	return config_finish(c, err, errlen);
}

void config_free(struct config *c)
{
	for (size_t i = 0; i < NOPTS; i++)
		if (opts[i].kind == OPT_STR)
			free(*(char **)((char *)c + opts[i].offset));
	mq_url_free(&c->amqp);
	*c = (struct config){0};
}

const char *config_body_type_name(enum body_type t) { return body_types[t]; }

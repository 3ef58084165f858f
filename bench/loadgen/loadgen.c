/* loadgen: publish generated messages to RabbitMQ queues as fast as possible
 * or at a target rate, with publisher confirms, and report what the broker
 * confirmed. This file holds option parsing, signals, progress and summary. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loadgen.h"

#define LG_DEFAULT_URL "amqp://guest:guest@127.0.0.1:5672/"
#define LG_DEFAULT_QUEUE "events"
#define LG_MAX_CONNECTIONS 1024
#define LG_MAX_WINDOW 1000000
#define LG_MAX_SIZE (128u * 1024 * 1024) /* RabbitMQ's default max_message_size */
#define LG_MAX_QUEUE_NAME 255
#define LG_TICK_NS (50 * 1000 * 1000ull)
#define LG_DRAW_NS (250 * 1000 * 1000ull)
#define LG_ABANDON_NS (7 * LG_NS_PER_S) /* stop grace (5 s) plus closing */

atomic_int lg_stop;

struct lg_totals {
	uint64_t sent;
	uint64_t confirmed;
	uint64_t nacked;
	uint64_t returned;
	uint64_t unconfirmed;
	uint64_t bytes;
	double seconds;
	bool errors;
	bool interrupted;
};

enum {
	LG_OPT_URL = 256,
	LG_OPT_QUEUE,
	LG_OPT_DECLARE,
	LG_OPT_PURGE,
	LG_OPT_COUNT,
	LG_OPT_DURATION,
	LG_OPT_RATE,
	LG_OPT_CONNECTIONS,
	LG_OPT_CONFIRM_WINDOW,
	LG_OPT_SIZE,
	LG_OPT_SHAPE,
	LG_OPT_SEED,
	LG_OPT_PERSISTENT,
	LG_OPT_TRANSIENT,
	LG_OPT_TIMESTAMP_US,
	LG_OPT_POISON_EVERY,
	LG_OPT_JSON,
	LG_OPT_HELP,
	LG_OPT_VERSION,
};

static const struct option lg_options[] = {
	{ "url", required_argument, NULL, LG_OPT_URL },
	{ "queue", required_argument, NULL, LG_OPT_QUEUE },
	{ "declare", no_argument, NULL, LG_OPT_DECLARE },
	{ "purge", no_argument, NULL, LG_OPT_PURGE },
	{ "count", required_argument, NULL, LG_OPT_COUNT },
	{ "duration", required_argument, NULL, LG_OPT_DURATION },
	{ "rate", required_argument, NULL, LG_OPT_RATE },
	{ "connections", required_argument, NULL, LG_OPT_CONNECTIONS },
	{ "confirm-window", required_argument, NULL, LG_OPT_CONFIRM_WINDOW },
	{ "size", required_argument, NULL, LG_OPT_SIZE },
	{ "shape", required_argument, NULL, LG_OPT_SHAPE },
	{ "seed", required_argument, NULL, LG_OPT_SEED },
	{ "persistent", no_argument, NULL, LG_OPT_PERSISTENT },
	{ "transient", no_argument, NULL, LG_OPT_TRANSIENT },
	{ "timestamp-us", no_argument, NULL, LG_OPT_TIMESTAMP_US },
	{ "poison-every", required_argument, NULL, LG_OPT_POISON_EVERY },
	{ "json", no_argument, NULL, LG_OPT_JSON },
	{ "help", no_argument, NULL, LG_OPT_HELP },
	{ "version", no_argument, NULL, LG_OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

void lg_error(const char *fmt, ...)
{
	va_list ap;

	flockfile(stderr); /* one whole line per call, whichever thread */
	if (isatty(STDERR_FILENO))
		fputs("\r\033[2K", stderr); /* don't append to a progress line */
	fputs("loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	funlockfile(stderr);
}

static void lg_usage(void)
{
	printf("Usage: loadgen [OPTIONS]\n"
	       "Publish generated messages to RabbitMQ with publisher confirms.\n"
	       "\n"
	       "  --url URL             broker (env RABBITMQ_URL)\n"
	       "                        [" LG_DEFAULT_URL "]\n"
	       "  --queue NAME[,NAME]   target queue(s); repeatable; messages go\n"
	       "                        round-robin per connection [" LG_DEFAULT_QUEUE "]\n"
	       "  --declare             declare each queue durable first\n"
	       "  --purge               purge each queue first\n"
	       "  --count N             total messages [100000]\n"
	       "  --duration SECONDS    publish for this long instead of --count\n"
	       "  --rate R              total msgs/s, 0 = as fast as possible [0]\n"
	       "  --connections C       connections, one thread each [2]\n"
	       "  --confirm-window W    max unconfirmed messages per connection [1000]\n"
	       "  --size BYTES          body size; json pads up to it [200]\n"
	       "  --shape SHAPE         json, bytes or text [json]\n"
	       "  --seed S              seed for bodies and message ids [1]\n"
	       "  --persistent          delivery_mode 2 (default)\n"
	       "  --transient           delivery_mode 1\n"
	       "  --timestamp-us        add header x-publish-us (µs since the epoch)\n"
	       "  --poison-every N      json: every Nth body (seq %% N == N-1) is cut\n"
	       "                        short, invalid JSON; 0 = none [0]\n"
	       "  --json                print the summary as one JSON object\n"
	       "  --help                show this help and exit\n"
	       "  --version             show the version and exit\n"
	       "\n"
	       "Connection i of C publishes seq i, i+C, i+2C, ...; message_id is\n"
	       "\"<seed>-<seq>\"; headers: seq (int64), shape (string).\n"
	       "Exit status: 0 all confirmed, 1 failure, 2 usage error.\n");
}

static void __attribute__((noreturn)) lg_usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'loadgen --help'.\n", stderr);
	exit(2);
}

static uint64_t lg_parse_u64(const char *opt, const char *s, uint64_t min,
			     uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (s[0] >= '0' && s[0] <= '9' && *end == '\0' && errno == 0 &&
	    v >= min && v <= max)
		return v;
	if (max >= UINT64_MAX - 1)
		lg_usage_error("%s: invalid value '%s' (expected an integer "
			       ">= %" PRIu64 ")", opt, s, min);
	lg_usage_error("%s: invalid value '%s' (expected an integer from %"
		       PRIu64 " to %" PRIu64 ")", opt, s, min, max);
}

static double lg_parse_double(const char *opt, const char *s, double min,
			      double max, bool min_inclusive)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0 || !isfinite(v) ||
	    v > max || v < min || (!min_inclusive && v == min))
		lg_usage_error("%s: invalid value '%s' (expected a number %s "
			       "%g and at most %g)", opt, s,
			       min_inclusive ? ">=" : ">", min, max);
	return v;
}

static void lg_add_queue(struct lg_config *cfg, const char *name, size_t len)
{
	char **grown;

	if (len == 0 || len > LG_MAX_QUEUE_NAME)
		lg_usage_error("--queue: queue names must be 1 to %d bytes",
			       LG_MAX_QUEUE_NAME);
	grown = realloc(cfg->queues, (cfg->nqueues + 1) * sizeof(*grown));
	if (!grown || !(grown[cfg->nqueues] = strndup(name, len))) {
		lg_error("out of memory");
		exit(1);
	}
	cfg->queues = grown;
	cfg->nqueues++;
}

/* "a,b,c" adds three queues. */
static void lg_add_queues(struct lg_config *cfg, const char *list)
{
	for (;;) {
		const char *comma = strchr(list, ',');
		size_t len = comma ? (size_t)(comma - list) : strlen(list);

		lg_add_queue(cfg, list, len);
		if (!comma)
			break;
		list = comma + 1;
	}
}

/* `source` names where the URL came from, for messages; the URL itself is
 * never echoed because it may hold a password. */
static void lg_parse_url(struct lg_config *cfg, const char *url,
			 const char *source)
{
	cfg->url_copy = strdup(url);
	if (!cfg->url_copy) {
		lg_error("out of memory");
		exit(1);
	}
	if (amqp_parse_url(cfg->url_copy, &cfg->amqp) != AMQP_STATUS_OK)
		lg_usage_error("%s: invalid AMQP URL (expected "
			       "amqp://user:password@host:port/vhost)", source);
	if (cfg->amqp.ssl)
		lg_usage_error("%s: amqps:// is not supported", source);
	if (cfg->amqp.vhost[0] == '\0')
		cfg->amqp.vhost = "/"; /* "amqp://host/" means "/", as in pika */
}

static void lg_config_defaults(struct lg_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->count = 100000;
	cfg->connections = 2;
	cfg->confirm_window = 1000;
	cfg->size = 200;
	cfg->shape = LG_SHAPE_JSON;
	cfg->seed = 1;
	cfg->persistent = true;
}

static void lg_config_free(struct lg_config *cfg)
{
	for (size_t i = 0; i < cfg->nqueues; i++)
		free(cfg->queues[i]);
	free(cfg->queues);
	free(cfg->url_copy);
}

/* Applies one option; exits on --help, --version and bad values. */
static void lg_apply_option(struct lg_config *cfg, int opt, const char *arg)
{
	switch (opt) {
	case LG_OPT_QUEUE:
		lg_add_queues(cfg, arg);
		break;
	case LG_OPT_DECLARE:
		cfg->declare = true;
		break;
	case LG_OPT_PURGE:
		cfg->purge = true;
		break;
	case LG_OPT_COUNT:
		cfg->count = lg_parse_u64("--count", arg, 1, UINT64_MAX - 1);
		break;
	case LG_OPT_DURATION:
		cfg->duration = lg_parse_double("--duration", arg, 0, 1e7, false);
		break;
	case LG_OPT_RATE:
		cfg->rate = lg_parse_double("--rate", arg, 0, 1e9, true);
		break;
	case LG_OPT_CONNECTIONS:
		cfg->connections = (unsigned)lg_parse_u64(
			"--connections", arg, 1, LG_MAX_CONNECTIONS);
		break;
	case LG_OPT_CONFIRM_WINDOW:
		cfg->confirm_window = (unsigned)lg_parse_u64(
			"--confirm-window", arg, 1, LG_MAX_WINDOW);
		break;
	case LG_OPT_SIZE:
		cfg->size = (size_t)lg_parse_u64("--size", arg, 0, LG_MAX_SIZE);
		break;
	case LG_OPT_SHAPE:
		if (lg_shape_parse(arg, &cfg->shape) < 0)
			lg_usage_error("--shape: invalid value '%s' (expected "
				       "json, bytes or text)", arg);
		break;
	case LG_OPT_SEED:
		cfg->seed = lg_parse_u64("--seed", arg, 0, UINT64_MAX);
		break;
	case LG_OPT_PERSISTENT:
	case LG_OPT_TRANSIENT:
		cfg->persistent = opt == LG_OPT_PERSISTENT;
		break;
	case LG_OPT_TIMESTAMP_US:
		cfg->timestamp_us = true;
		break;
	case LG_OPT_POISON_EVERY:
		cfg->poison_every = lg_parse_u64("--poison-every", arg, 0, UINT64_MAX);
		break;
	case LG_OPT_JSON:
		cfg->json = true;
		break;
	case LG_OPT_HELP:
		lg_usage();
		exit(0);
	case LG_OPT_VERSION:
		printf("loadgen " LG_VERSION "\n");
		exit(0);
	}
}

static void lg_parse_args(int argc, char **argv, struct lg_config *cfg)
{
	const char *url = NULL, *url_source = "--url";
	bool count_set = false;
	int opt;

	lg_config_defaults(cfg);
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":", lg_options, NULL)) != -1) {
		if (opt == ':')
			lg_usage_error("%s: missing value", argv[optind - 1]);
		if (opt == '?')
			lg_usage_error("unknown option '%s'", argv[optind - 1]);
		if (opt == LG_OPT_URL)
			url = optarg;
		count_set |= opt == LG_OPT_COUNT;
		lg_apply_option(cfg, opt, optarg);
	}
	if (optind < argc)
		lg_usage_error("unexpected argument '%s'", argv[optind]);
	if (count_set && cfg->duration > 0)
		lg_usage_error("--count and --duration are mutually exclusive");
	if (cfg->duration > 0)
		cfg->count = UINT64_MAX;
	if (cfg->nqueues == 0)
		lg_add_queues(cfg, LG_DEFAULT_QUEUE);
	if (!url) {
		url = getenv("RABBITMQ_URL");
		if (url && *url)
			url_source = "RABBITMQ_URL";
		else
			url = LG_DEFAULT_URL;
	}
	lg_parse_url(cfg, url, url_source);
}

/* amqp://user@host:port/vhost, never with the password. */
static void lg_format_target(const struct lg_config *cfg, char *buf, size_t n)
{
	const char *host = cfg->amqp.host;
	bool v6 = strchr(host, ':') != NULL;
	const char *vhost = strcmp(cfg->amqp.vhost, "/") == 0 ? "" :
								cfg->amqp.vhost;

	snprintf(buf, n, "amqp://%s@%s%s%s:%d/%s", cfg->amqp.user,
		 v6 ? "[" : "", host, v6 ? "]" : "", cfg->amqp.port, vhost);
}

static void lg_on_signal(int signo)
{
	atomic_store(&lg_stop, signo);
}

/* The first SIGINT/SIGTERM asks for a graceful stop; a second one kills. */
static void lg_install_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = lg_on_signal;
	sa.sa_flags = SA_RESETHAND;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Starts the workers with SIGINT/SIGTERM blocked so only the main thread
 * takes them. Returns how many started. */
static unsigned lg_start_workers(struct lg_worker *ws, unsigned n,
				 uint64_t start_ns)
{
	sigset_t block, old;
	unsigned started = 0;

	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	while (started < n && lg_worker_start(&ws[started], start_ns) == 0)
		started++;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (started < n)
		atomic_store(&lg_stop, LG_STOP_ERROR);
	return started;
}

static bool lg_all_done(struct lg_worker *ws, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (!atomic_load(&ws[i].done))
			return false;
	return true;
}

static void lg_draw_progress(struct lg_worker *ws, unsigned n,
			     uint64_t start_ns, uint64_t now,
			     uint64_t *last_ns, uint64_t *last_confirmed)
{
	uint64_t sent = 0, confirmed = 0;
	double dt = (double)(now - *last_ns) / 1e9;

	for (unsigned i = 0; i < n; i++) {
		sent += atomic_load_explicit(&ws[i].sent, memory_order_relaxed);
		confirmed += atomic_load_explicit(&ws[i].confirmed,
						  memory_order_relaxed);
	}
	fprintf(stderr, "\r\033[2Ksent %" PRIu64 "  confirmed %" PRIu64
		"  %.0f msg/s  %.1f s", sent, confirmed,
		dt > 0 ? (double)(confirmed - *last_confirmed) / dt : 0.0,
		(double)(now - start_ns) / 1e9);
	fflush(stderr);
	*last_ns = now;
	*last_confirmed = confirmed;
}

/* Shows progress until every worker is done. Returns false when workers
 * are still running well after a stop request (e.g. stuck in a blocked
 * send) and the run is being abandoned. */
static bool lg_watch(struct lg_worker *ws, unsigned n, uint64_t start_ns)
{
	bool tty = isatty(STDERR_FILENO);
	uint64_t last_ns = start_ns, last_confirmed = 0, stop_seen = 0;
	uint64_t next_draw = start_ns + LG_DRAW_NS;

	while (!lg_all_done(ws, n)) {
		lg_sleep_ns(LG_TICK_NS);
		uint64_t now = lg_now_ns();
		int stop = atomic_load(&lg_stop);

		if (stop && !stop_seen) {
			stop_seen = now;
			if (stop > 0)
				lg_error("%s: stopping; waiting up to 5 s for "
					 "outstanding confirms",
					 stop == SIGINT ? "SIGINT" : "SIGTERM");
		}
		if (stop_seen && now - stop_seen > LG_ABANDON_NS) {
			lg_error("connections did not finish in time; giving up");
			return false;
		}
		if (tty && now >= next_draw) {
			lg_draw_progress(ws, n, start_ns, now, &last_ns,
					 &last_confirmed);
			next_draw = now + LG_DRAW_NS;
		}
	}
	if (tty)
		fputs("\r\033[2K", stderr);
	return true;
}

static void lg_collect(struct lg_worker *ws, unsigned n, uint64_t start_ns,
		       struct lg_totals *t)
{
	uint64_t end_ns = start_ns;

	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < n; i++) {
		struct lg_worker *w = &ws[i];
		bool done = atomic_load(&w->done);
		uint64_t sent = atomic_load(&w->sent);
		uint64_t settled = atomic_load(&w->confirmed) +
				   atomic_load(&w->nacked) +
				   atomic_load(&w->returned);
		uint64_t w_end = done ? w->end_ns : lg_now_ns();

		t->sent += sent;
		t->confirmed += atomic_load(&w->confirmed);
		t->nacked += atomic_load(&w->nacked);
		t->returned += atomic_load(&w->returned);
		t->unconfirmed += done ? atomic_load(&w->unconfirmed) :
					 sent - settled;
		t->bytes += atomic_load(&w->bytes);
		t->errors |= !done || atomic_load(&w->failed_hard);
		if (w_end > end_ns)
			end_ns = w_end;
	}
	t->seconds = (double)(end_ns - start_ns) / 1e9;
	t->interrupted = atomic_load(&lg_stop) > 0;
}

static uint64_t lg_failed(const struct lg_totals *t)
{
	return t->nacked + t->returned + t->unconfirmed;
}

static double lg_per_sec(double v, double seconds)
{
	return seconds > 0 ? v / seconds : 0;
}

static void lg_print_text(const struct lg_config *cfg, const struct lg_totals *t)
{
	char target[512];

	lg_format_target(cfg, target, sizeof(target));
	printf("target       %s\n", target);
	printf("queues       ");
	for (size_t i = 0; i < cfg->nqueues; i++)
		printf("%s%s", i ? "," : "", cfg->queues[i]);
	printf("\nconnections  %u\n", cfg->connections);
	printf("messages     %s, %zu bytes, %s\n", lg_shape_name(cfg->shape),
	       cfg->size, cfg->persistent ? "persistent" : "transient");
	printf("confirmed    %" PRIu64 "\n", t->confirmed);
	printf("failed       %" PRIu64 " (nacked %" PRIu64 ", returned %" PRIu64
	       ", unconfirmed %" PRIu64 ")\n", lg_failed(t), t->nacked,
	       t->returned, t->unconfirmed);
	printf("seconds      %.3f\n", t->seconds);
	printf("msgs/s       %.0f\n", lg_per_sec((double)t->confirmed, t->seconds));
	printf("bytes        %" PRIu64 " (%.1f MB/s)\n", t->bytes,
	       lg_per_sec((double)t->bytes, t->seconds) / 1e6);
	if (t->interrupted)
		printf("interrupted  yes\n");
}

static void lg_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void lg_print_json(const struct lg_config *cfg, const struct lg_totals *t)
{
	char target[512];

	lg_format_target(cfg, target, sizeof(target));
	printf("{\"target\":");
	lg_json_string(target);
	printf(",\"queues\":[");
	for (size_t i = 0; i < cfg->nqueues; i++) {
		if (i)
			putchar(',');
		lg_json_string(cfg->queues[i]);
	}
	printf("],\"connections\":%u,\"shape\":\"%s\",\"size\":%zu,"
	       "\"persistent\":%s,", cfg->connections, lg_shape_name(cfg->shape),
	       cfg->size, cfg->persistent ? "true" : "false");
	printf("\"sent\":%" PRIu64 ",\"confirmed\":%" PRIu64
	       ",\"failed\":%" PRIu64 ",\"nacked\":%" PRIu64
	       ",\"returned\":%" PRIu64 ",\"unconfirmed\":%" PRIu64 ",",
	       t->sent, t->confirmed, lg_failed(t), t->nacked, t->returned,
	       t->unconfirmed);
	printf("\"seconds\":%.3f,\"msgs_per_sec\":%.1f,\"bytes\":%" PRIu64
	       ",\"interrupted\":%s,\"errors\":%s}\n", t->seconds,
	       lg_per_sec((double)t->confirmed, t->seconds), t->bytes,
	       t->interrupted ? "true" : "false", t->errors ? "true" : "false");
}

static void lg_print_summary(const struct lg_config *cfg,
			     const struct lg_totals *t)
{
	if (cfg->json)
		lg_print_json(cfg, t);
	else
		lg_print_text(cfg, t);
}

static struct lg_worker *lg_open_workers(const struct lg_config *cfg)
{
	struct lg_worker *ws = calloc(cfg->connections, sizeof(*ws));

	if (!ws) {
		lg_error("out of memory");
		return NULL;
	}
	for (unsigned i = 0; i < cfg->connections; i++) {
		if (lg_worker_open(&ws[i], cfg, i) < 0) {
			while (i--)
				lg_worker_free(&ws[i]);
			free(ws);
			return NULL;
		}
	}
	return ws;
}

static void lg_close_workers(struct lg_worker *ws, unsigned started,
			     unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (i < started)
			pthread_join(ws[i].thread, NULL);
		lg_worker_free(&ws[i]);
	}
	free(ws);
}

/* Publishes, reports and returns the exit status. */
static int lg_run(const struct lg_config *cfg)
{
	struct lg_totals totals;
	struct lg_worker *ws;
	unsigned started;
	uint64_t start_ns;

	if (lg_setup_queues(cfg) < 0)
		return 1;
	ws = lg_open_workers(cfg);
	if (!ws)
		return 1;
	lg_install_signals();
	start_ns = lg_now_ns();
	started = lg_start_workers(ws, cfg->connections, start_ns);
	if (!lg_watch(ws, started, start_ns)) {
		lg_collect(ws, started, start_ns, &totals);
		lg_print_summary(cfg, &totals);
		fflush(stdout);
		_exit(1); /* threads are stuck in the library; don't join them */
	}
	lg_collect(ws, started, start_ns, &totals);
	totals.errors |= started < cfg->connections;
	lg_print_summary(cfg, &totals);
	lg_close_workers(ws, started, cfg->connections);
	return totals.errors || lg_failed(&totals) ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct lg_config cfg;
	int rc;

	lg_parse_args(argc, argv, &cfg);
	rc = lg_run(&cfg);
	lg_config_free(&cfg);
	return rc;
}

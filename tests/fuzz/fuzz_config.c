/* Fuzz target: URL and option parsing. mq_url_parse on the input as a
 * string, then config_load with an argv and environment taken from it, and
 * config_free after every load.
 *
 * Input: pieces separated by NUL bytes. Piece 0 is the URL given to
 * mq_url_parse, and also argv[0]. A later piece that starts with byte 0x01
 * sets an environment variable: its next byte picks the name from
 * env_names[] (value % count), the rest is the value; every other piece is
 * the next argv element. All env_names are unset before each input.
 *
 * Checks: no crash, leak or undefined behaviour; a successful parse gives
 * values within the documented ranges; and no error text (nor the redacted
 * URL) repeats any part of a password given in the input. A part is a
 * 4-byte window of the password that holds a byte >= 0x80 (error templates
 * are ASCII, so such a window in the text came from the input) and occurs
 * nowhere else in the input (else the text may be echoing that other
 * place). Passwords are looked for in piece 0, RABBITMQ_URL, POSTGRES_DSN
 * and every argument (see uri_password and dsn_password). Also: config_load
 * gives the same answer twice for one input (no state kept between loads). */
#include "amqp/url.h"
#include "config.h"
#include "fuzz_common.h"

static const char *const env_names[] = {
	"RABBITMQ_URL",	    "POSTGRES_DSN",	 "SLUICE_QUEUE",     "SLUICE_TABLE",
	"SLUICE_PREFETCH",  "SLUICE_BATCH_BYTES", "SLUICE_BODY_TYPE", "SLUICE_UNTIL_EMPTY",
	"SLUICE_SHARDS",    "SLUICE_LOG_LEVEL",	 "SLUICE_IO",	      "SLUICE_LINGER_MS",
};
#define NENV (sizeof(env_names) / sizeof(env_names[0]))
#define MAX_ARGS 64
#define MAX_SECRETS 8

/* putenv with buffers we own and rewrite: setenv would keep every value it
 * ever saw (glibc never frees them), growing without bound over a run. */
static char env_buf[NENV][4096];

struct span {
	const uint8_t *p; /* into the input */
	size_t n;
};

struct secrets {
	struct span s[MAX_SECRETS];
	int n;
};

static const uint8_t *find(const uint8_t *h, size_t hn, const void *needle, size_t nn)
{
	return memmem(h, hn, needle, nn);
}

static void add_secret(struct secrets *ss, const uint8_t *p, size_t n)
{
	if (n >= 4 && ss->n < MAX_SECRETS)
		ss->s[ss->n++] = (struct span){p, n};
}

/* The password of a URI "scheme://user:password@host...": between the
 * first ':' after the scheme and the first '@' after that, whatever lies
 * between (users paste raw passwords with '/', '?' or '#' in them). */
static void uri_password(struct secrets *ss, const uint8_t *p, size_t n)
{
	const uint8_t *sep = find(p, n, "://", 3);
	if (!sep)
		return;
	const uint8_t *auth = sep + 3, *end = p + n;
	const uint8_t *at = memchr(auth, '@', (size_t)(end - auth));
	if (!at)
		return;
	const uint8_t *colon = memchr(auth, ':', (size_t)(at - auth));
	if (colon)
		add_secret(ss, colon + 1, (size_t)(at - colon - 1));
}

/* A libpq DSN: a URI, or keyword=value pairs with password=... */
static void dsn_password(struct secrets *ss, const uint8_t *p, size_t n)
{
	if (find(p, n, "://", 3)) {
		uri_password(ss, p, n);
		return;
	}
	const uint8_t *q = p, *end = p + n;
	while ((q = find(q, (size_t)(end - q), "password", 8))) {
		q += 8;
		while (q < end && (*q == ' ' || *q == '='))
			q++;
		const uint8_t *v = q;
		if (q < end && *q == '\'') {
			v = ++q;
			while (q < end && *q != '\'')
				q++;
		} else {
			while (q < end && *q != ' ' && *q != '\t' && *q != '\n')
				q++;
		}
		add_secret(ss, v, (size_t)(q - v));
	}
}

/* Does text repeat a window of a secret that the input holds nowhere else? */
static bool leaks(const char *text, const struct secrets *ss, const uint8_t *in, size_t in_n,
		  size_t *which, size_t *at)
{
	size_t tn = strlen(text);
	for (int k = 0; k < ss->n; k++) {
		const struct span *s = &ss->s[k];
		for (size_t i = 0; i + 4 <= s->n; i++) {
			const uint8_t *w = s->p + i;
			if (w[0] < 0x80 && w[1] < 0x80 && w[2] < 0x80 && w[3] < 0x80)
				continue;
			if (!find((const uint8_t *)text, tn, w, 4))
				continue;
			/* Elsewhere in the input: any occurrence not inside this secret. */
			bool elsewhere = false;
			for (const uint8_t *o = in; (o = find(o, (size_t)(in + in_n - o), w, 4)); o++)
				if (o < s->p || o + 4 > s->p + s->n) {
					elsewhere = true;
					break;
				}
			if (!elsewhere) {
				*which = (size_t)k;
				*at = i;
				return true;
			}
		}
	}
	return false;
}

#define CHECK_NO_LEAK(text, ss, what)                                                  \
	do {                                                                           \
		size_t which_, at_;                                                    \
		FUZZ_CHECK(!leak_check || !leaks((text), (ss), data, size, &which_, &at_), \
			   "%s repeats bytes %zu.. of password #%zu (%zu bytes): %s", (what), \
			   at_, which_, (ss)->s[which_].n, (text));                    \
	} while (0)

static void check_url(const struct mq_url *u)
{
	FUZZ_CHECK(u->storage && u->user && u->password && u->host && u->vhost, "NULL part");
	FUZZ_CHECK(u->port >= 0 && u->port <= 65535, "port %d", u->port);
	FUZZ_CHECK(u->heartbeat >= 0 && u->heartbeat <= 65535, "heartbeat %d", u->heartbeat);
	FUZZ_CHECK(u->frame_max == 0 || u->frame_max >= 4096, "frame_max %d", u->frame_max);
	FUZZ_CHECK(u->channel_max >= 0 && u->channel_max <= 65535, "channel_max");
	FUZZ_CHECK(u->vhost[0], "empty vhost");
}

/* The redacted form never shows the password (unless the same bytes are
 * also the user, host or vhost). */
static void check_redacted(const struct mq_url *u)
{
	char red[1024];
	mq_url_redacted(u, red, sizeof(red));
	const uint8_t *pw = (const uint8_t *)u->password;
	for (size_t i = 0; pw[i] && pw[i + 1] && pw[i + 2] && pw[i + 3]; i++) {
		char w[5] = {(char)pw[i], (char)pw[i + 1], (char)pw[i + 2], (char)pw[i + 3], 0};
		if (!((pw[i] | pw[i + 1] | pw[i + 2] | pw[i + 3]) & 0x80))
			continue;
		/* A window with a URL delimiter can match across the user and
		 * the '@' the redacted form puts after it: not the password. */
		if (strpbrk(w, "@:/"))
			continue;
		if (strstr(u->user, w) || strstr(u->host, w) || strstr(u->vhost, w))
			continue;
		FUZZ_CHECK(!strstr(red, w), "redacted URL shows the password: %s", red);
	}
}

/* To look past a known leak for other findings: FUZZ_SKIP_LEAK_CHECK=1
 * checks no error text, =args only leaves the arguments' passwords out. */
static bool leak_check = true, arg_secrets = true;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	fuzz_save_stderr();
	const char *skip = getenv("FUZZ_SKIP_LEAK_CHECK");
	leak_check = !(skip && strcmp(skip, "1") == 0);
	arg_secrets = !(skip && strcmp(skip, "args") == 0);
	for (size_t i = 0; i < NENV; i++)
		unsetenv(env_names[i]);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A NUL-terminated copy; pieces are split in place. */
	char *copy = malloc(size + 1);
	FUZZ_CHECK(copy, "malloc");
	memcpy(copy, data, size);
	copy[size] = '\0';
	char err[512];

	/* 1. The URL parser on piece 0. */
	struct secrets url_secrets = {0};
	size_t n0 = strlen(copy);
	uri_password(&url_secrets, data, n0);
	struct mq_url u;
	err[0] = '\0';
	if (mq_url_parse(copy, &u, err, sizeof(err)) == 0) {
		check_url(&u);
		check_redacted(&u);
		mq_url_free(&u);
	} else {
		FUZZ_CHECK(err[0], "mq_url_parse failed without a message");
		CHECK_NO_LEAK(err, &url_secrets, "mq_url_parse's error");
	}

	/* 2. config_load with argv and environment from the pieces. */
	for (size_t i = 0; i < NENV; i++)
		unsetenv(env_names[i]);
	char *argv[MAX_ARGS + 1];
	int argc = 0;
	struct secrets cfg_secrets = {0};
	for (size_t off = 0; off <= size && argc < MAX_ARGS;) {
		char *piece = copy + off;
		size_t len = strlen(piece);
		const uint8_t *raw = data + off;
		if (off > 0 && len >= 2 && piece[0] == 1) {
			size_t k = (uint8_t)piece[1] % NENV;
			snprintf(env_buf[k], sizeof(env_buf[k]), "%s=%s", env_names[k], piece + 2);
			putenv(env_buf[k]);
			if (k <= 1) /* RABBITMQ_URL, POSTGRES_DSN */
				dsn_password(&cfg_secrets, raw + 2, len - 2);
		} else {
			/* Any argument may be a URL or DSN: the value of
			 * --rabbitmq-url, "--rabbitmq_url=..." mistyped, a stray
			 * positional one. */
			argv[argc++] = piece;
			if (arg_secrets)
				dsn_password(&cfg_secrets, raw, len);
		}
		off += len + 1;
	}
	argv[argc] = NULL;

	/* Twice: the same input must give the same answer (no state kept from
	 * one load to the next; getopt's used to be, see crashes/README). */
	struct config c;
	char err2[sizeof(err)] = "";
	enum config_result rc2 = config_load(&c, argc, argv, err2, sizeof(err2));
	config_free(&c);
	err[0] = '\0';
	enum config_result rc = config_load(&c, argc, argv, err, sizeof(err));
	FUZZ_CHECK(rc == rc2 && strcmp(err, err2) == 0,
		   "config_load gave %d \"%s\", then %d \"%s\" for the same input", (int)rc2, err2,
		   (int)rc, err);
	switch (rc) {
	case CONFIG_OK:
		FUZZ_CHECK(c.queue && c.queue[0] && strlen(c.queue) <= 255, "queue");
		FUZZ_CHECK(c.table && c.table[0], "table");
		FUZZ_CHECK(c.postgres_dsn && c.rabbitmq_url, "strings");
		FUZZ_CHECK(c.shards >= 1 && c.shards <= 1024, "shards %ld", c.shards);
		FUZZ_CHECK(c.prefetch >= 1 && c.prefetch <= 65535, "prefetch %ld", c.prefetch);
		FUZZ_CHECK(c.batch_bytes >= 4096 && c.batch_bytes <= 1L << 30, "batch_bytes");
		FUZZ_CHECK(c.batch_rows >= 1 && c.batch_rows <= 1000000, "batch_rows");
		FUZZ_CHECK(c.body_type >= 0 && c.body_type <= BODY_TEXT, "body_type");
		check_url(&c.amqp);
		break;
	case CONFIG_EXIT:
		break;
	case CONFIG_ERROR:
		FUZZ_CHECK(err[0], "config_load failed without a message");
		CHECK_NO_LEAK(err, &cfg_secrets, "config_load's error");
		break;
	default:
		FUZZ_CHECK(0, "config_load returned %d", (int)rc);
	}
	config_free(&c);
	for (size_t i = 0; i < NENV; i++)
		unsetenv(env_names[i]);
	free(copy);
	return 0;
}

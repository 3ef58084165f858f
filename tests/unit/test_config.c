/* Option and URL parsing, good and bad: defaults, env versus flags, the
 * exit classes, error texts that name the option, and no password in any
 * error text. */
#include <stdarg.h>
#include <stdlib.h>

#include "amqp/url.h"
#include "check.h"
#include "config.h"
#include "pg/connect.h"

static void test_url(void)
{
	struct mq_url u;
	char err[256], red[256];

	CHECK(mq_url_parse("amqp://alice:s3cr%40t@mq.example:5673/prod?heartbeat=5&frame_max=65536",
			   &u, err, sizeof(err)) == 0);
	CHECK_STR(u.user, "alice");
	CHECK_STR(u.password, "s3cr@t"); /* percent-decoded */
	CHECK_STR(u.host, "mq.example");
	CHECK(u.port == 5673);
	CHECK_STR(u.vhost, "prod");
	CHECK(u.heartbeat == 5 && u.frame_max == 65536 && u.channel_max == 0);
	mq_url_redacted(&u, red, sizeof(red));
	CHECK_STR(red, "amqp://alice@mq.example:5673/prod");
	mq_url_free(&u);

	/* Trailing slash or none: the default vhost, as pika does. */
	CHECK(mq_url_parse("amqp://guest:guest@127.0.0.1:5672/", &u, err, sizeof(err)) == 0);
	CHECK_STR(u.vhost, "/");
	CHECK(u.heartbeat == 60);
	mq_url_free(&u);
	CHECK(mq_url_parse("amqp://h", &u, err, sizeof(err)) == 0);
	CHECK_STR(u.vhost, "/");
	CHECK_STR(u.user, "guest");
	CHECK(u.port == 5672);
	mq_url_free(&u);
	CHECK(mq_url_parse("amqp://h/%2f", &u, err, sizeof(err)) == 0);
	CHECK_STR(u.vhost, "/");
	mq_url_free(&u);
	CHECK(mq_url_parse("amqp://[::1]:5672/v", &u, err, sizeof(err)) == 0);
	CHECK_STR(u.host, "::1");
	mq_url_free(&u);

	static const char *const bad[] = {
		"http://u:Pw0rdXyz@h/", "amqp://u:Pw0rdXyz@h:99999/", "amqp://u:Pw0rdXyz@h/?heartbeat=x",
		"amqp://u:Pw0rdXyz@h/?frame_max=100", "amqp://u:Pw0rdXyz@h/?nope=1",
		"amqps://u:Pw0rdXyz@h/", "amqp://u:Pw0rdXyz@h/a/b",
		"amqp://u:x?Pw0rdXyz@h/", /* a raw '?' in the password */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		CHECK(mq_url_parse(bad[i], &u, err, sizeof(err)) == -1);
		CHECK(strstr(err, "RABBITMQ_URL") != NULL);
		CHECK(strstr(err, "Pw0rdXyz") == NULL);
	}
}

static enum config_result load(struct config *c, char *err, size_t n, int argc, ...)
{
	char *argv[16] = {"sluice"};
	va_list ap;
	va_start(ap, argc);
	for (int i = 1; i < argc; i++)
		argv[i] = va_arg(ap, char *);
	va_end(ap);
	err[0] = '\0';
	return config_load(c, argc, argv, err, n);
}

static void test_options(void)
{
	struct config c;
	char err[512];

	unsetenv("SLUICE_QUEUE");
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "SLUICE_QUEUE") != NULL);
	config_free(&c);

	/* Defaults, and the table defaulting to the queue. */
	setenv("SLUICE_QUEUE", "events", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_OK);
	CHECK_STR(c.table, "events");
	CHECK(c.prefetch == 4000 && c.batch_rows == 1000 && c.batch_bytes == 8 << 20);
	CHECK(c.linger_ms == 20 && c.body_type == BODY_BYTEA && !c.no_create);
	CHECK(c.shards >= 1);
	config_free(&c);

	/* Env, then flags over env; both spellings of a flag. */
	setenv("SLUICE_BATCH_ROWS", "250", 1);
	setenv("SLUICE_BODY_TYPE", "jsonb", 1);
	setenv("SLUICE_NO_CREATE", "yes", 1);
	CHECK(load(&c, err, sizeof(err), 5, "--batch-rows=500", "--batch-bytes", "64KiB",
		   "--shards=3") == CONFIG_OK);
	CHECK(c.batch_rows == 500 && c.batch_bytes == 65536 && c.shards == 3);
	CHECK(c.body_type == BODY_JSONB && c.no_create);
	config_free(&c);
	unsetenv("SLUICE_BATCH_ROWS");
	unsetenv("SLUICE_BODY_TYPE");
	unsetenv("SLUICE_NO_CREATE");

	struct {
		const char *arg, *val, *names;
	} bad[] = {
		{"--prefetch", "0", "--prefetch"},
		{"--prefetch", "70000", "--prefetch"},
		{"--batch-rows", "12x", "--batch-rows"},
		{"--batch-bytes", "12X", "--batch-bytes"},
		{"--batch-bytes", "1", "--batch-bytes"},
		{"--body-type", "xml", "--body-type"},
		{"--linger-ms", "-1", "--linger-ms"},
		{"--log-level", "loud", "--log-level"},
		{"--bogus", "1", "--bogus"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(load(&c, err, sizeof(err), 3, bad[i].arg, bad[i].val) == CONFIG_ERROR);
		if (!strstr(err, bad[i].names))
			fprintf(stderr, "error for %s %s: %s\n", bad[i].arg, bad[i].val, err);
		CHECK(strstr(err, bad[i].names) != NULL);
		config_free(&c);
	}

	setenv("SLUICE_PREFETCH", "many", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "SLUICE_PREFETCH") != NULL);
	config_free(&c);
	unsetenv("SLUICE_PREFETCH");

	setenv("RABBITMQ_URL", "amqp://u:TopSecret9@h:notaport/", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "RABBITMQ_URL") != NULL && strstr(err, "TopSecret9") == NULL);
	config_free(&c);
	unsetenv("RABBITMQ_URL");

	/* libpq quotes the bad token of a DSN it cannot parse: never echo it. */
	setenv("POSTGRES_DSN", "postgresql://u:Wr0ngSecret!x%ZZ@127.0.0.1:1/db", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "POSTGRES_DSN") != NULL && strstr(err, "Wr0ngSecret") == NULL);
	config_free(&c);
	setenv("POSTGRES_DSN", "host=h password='Wr0ngSecret port=1", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "POSTGRES_DSN") != NULL && strstr(err, "Wr0ngSecret") == NULL);
	config_free(&c);
	setenv("POSTGRES_DSN", "postgresql://u:se\"Wr0ngSecret%zz@h/db", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_ERROR);
	CHECK(strstr(err, "POSTGRES_DSN") != NULL && strstr(err, "Wr0ngSecret") == NULL);
	config_free(&c);
	setenv("POSTGRES_DSN", "host=h password=ok", 1);
	CHECK(load(&c, err, sizeof(err), 1) == CONFIG_OK);
	config_free(&c);
	unsetenv("POSTGRES_DSN");

	CHECK(load(&c, err, sizeof(err), 2, "stray") == CONFIG_ERROR);
	config_free(&c);
	/* Mistyped flags and stray arguments are not echoed past the name. */
	CHECK(load(&c, err, sizeof(err), 2, "--rabbitmq_url=amqp://u:TopSecret9@h/") ==
	      CONFIG_ERROR);
	CHECK(strstr(err, "--rabbitmq_url") != NULL && strstr(err, "TopSecret9") == NULL);
	config_free(&c);
	CHECK(load(&c, err, sizeof(err), 2, "amqp://u:TopSecret9@h/") == CONFIG_ERROR);
	CHECK(strstr(err, "TopSecret9") == NULL);
	config_free(&c);
}

static void test_rootcert(void)
{
	unsetenv("PGSSLMODE");
	unsetenv("PGSSLROOTCERT");
	setenv("HOME", "/nonexistent", 1);
	setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt", 1);
	CHECK_STR(pg_default_rootcert("host=h sslmode=verify-full"),
		  "/etc/ssl/certs/ca-certificates.crt");
	CHECK_STR(pg_default_rootcert("postgresql://h/db?sslmode=verify-ca"),
		  "/etc/ssl/certs/ca-certificates.crt");
	CHECK(pg_default_rootcert("host=h sslmode=require") == NULL);
	CHECK(pg_default_rootcert("host=h") == NULL);
	CHECK(pg_default_rootcert("host=h sslmode=verify-full sslrootcert=/x.pem") == NULL);
	setenv("PGSSLMODE", "verify-full", 1);
	CHECK(pg_default_rootcert("host=h") != NULL);
	setenv("PGSSLROOTCERT", "/y.pem", 1);
	CHECK(pg_default_rootcert("host=h") == NULL);
	unsetenv("PGSSLMODE");
	unsetenv("PGSSLROOTCERT");
	unsetenv("SSL_CERT_FILE");
	CHECK(pg_default_rootcert("host=h sslmode=verify-full") == NULL);
}

int main(void)
{
	test_url();
	test_rootcert();
	test_options();
	return check_done("test_config");
}

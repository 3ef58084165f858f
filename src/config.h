/* sluice's configuration: one table of options, each a --flag and an
 * environment variable, parsed and validated once at start-up and read-only
 * afterwards (shards share it without locks). */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "amqp/url.h"

enum body_type { BODY_BYTEA, BODY_JSONB, BODY_TEXT };
enum dead_letter_mode { DEAD_LETTER_TABLE, DEAD_LETTER_REJECT };
enum dedupe_kind { DEDUPE_NONE, DEDUPE_MESSAGE_ID, DEDUPE_HEADER, DEDUPE_BODY };

struct config {
	char *rabbitmq_url; /* secret: never logged; see amqp */
	struct mq_url amqp;
	char *postgres_dsn; /* secret: never logged */
	char *queue;
	char *table;
	long shards;
	long prefetch;
	long batch_rows;
	long batch_bytes;
	long linger_ms;
	long body_type; /* enum body_type */
	bool no_create;
	long drain_timeout_s;
	bool until_empty;
	long stats_interval_s;
	long log_level; /* enum log_level */
	long io;	/* enum loop_choice */
	char *health_file; /* "" = none */
	long dead_letter;  /* enum dead_letter_mode */
	char *dead_letter_table;
	char *dedupe_key;  /* as given; parsed into the two below */
	enum dedupe_kind dedupe;
	const char *dedupe_header; /* DEDUPE_HEADER: the name, inside dedupe_key */
	bool health_check; /* --health-check: probe and exit */
};

enum config_result {
	CONFIG_OK,    /* run */
	CONFIG_EXIT,  /* --help or --version was printed: exit 0 */
	CONFIG_ERROR, /* err holds a message naming the option: exit 2 */
};

/* Fill c from the environment, then argv (flags win). */
enum config_result config_load(struct config *c, int argc, char **argv,
			       char *err, size_t errlen);
void config_free(struct config *c);
const char *config_body_type_name(enum body_type t);
/* Print the option reference (the text --help shows). */
void config_usage(FILE *out);

#endif

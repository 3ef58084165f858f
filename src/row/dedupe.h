/* The dedupe key of a message (--dedupe-key): its message_id, one of its
 * headers, or the SHA-256 of its body, gathered as the message streams in
 * and written as the row's last column. */
#ifndef SLUICE_ROW_DEDUPE_H
#define SLUICE_ROW_DEDUPE_H

#include <amqp.h>
#include <stdbool.h>

#include "buf.h"
#include "config.h"

struct dedupe {
	enum dedupe_kind kind;
	const char *header;
	void *sha;	  /* EVP_MD_CTX for DEDUPE_BODY */
	struct buf key;	  /* the key, once known */
	bool have;
	const char *why;  /* why there is none */
};

/* false when out of memory. */
bool dedupe_init(struct dedupe *d, const struct config *cfg);
void dedupe_free(struct dedupe *d);
/* Per message: the content header, then every body fragment. */
void dedupe_props(struct dedupe *d, const amqp_basic_properties_t *p);
void dedupe_body(struct dedupe *d, const void *bytes, size_t len);
/* At the end of the message: append the key as a COPY field and return
 * true, or return false with d->why saying what is missing. */
bool dedupe_write(struct dedupe *d, struct buf *row);

#endif

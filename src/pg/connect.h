/* Opening a PostgreSQL connection from POSTGRES_DSN, with the settings
 * sluice relies on (UTF8 client encoding for binary COPY of text). */
#ifndef SLUICE_PG_CONNECT_H
#define SLUICE_PG_CONNECT_H

#include <libpq-fe.h>
#include <stddef.h>

#include "config.h"

/* Bound on each step of a connection attempt (libpq's connect_timeout
 * applies only to its own blocking loop). */
#define PG_CONNECT_TIMEOUT_MS 10000

/* Check that dsn parses as a libpq connection string or URI; returns 0, or
 * -1 with a reason naming POSTGRES_DSN that quotes none of the DSN (libpq's
 * parse errors quote the offending token, which may be the password). */
int pg_dsn_check(const char *dsn, char *err, size_t errlen);
/* The CA bundle to verify the server with when the DSN asks for
 * sslmode=verify-ca/verify-full and names no root certificate: libpq 15
 * ignores OpenSSL's default locations, so SSL_CERT_FILE (what distroless
 * images set) would go unused, and PostgreSQL 16's sslrootcert=system is
 * not here. NULL leaves libpq's default (~/.postgresql/root.crt). */
const char *pg_default_rootcert(const char *dsn);
/* What a failure means for the work in hand (DESIGN.md, failure classes). */
enum pg_class {
	PG_TRANSIENT, /* keep the work; reconnect with backoff and retry */
	PG_ROW,	      /* the data: isolate the rows and dead-letter them */
	PG_CONFIG,    /* a setting to fix: stop with a message naming it */
};

/* Classify an SQLSTATE by its class (first two characters). */
enum pg_class pg_classify(const char *sqlstate);

/* Start a non-blocking connection (PQconnectStartParams): drive it with
 * PQconnectPoll. NULL only when out of memory. */
PGconn *pg_connect_start(const struct config *cfg);
/* After a connection failed: its reason as one line and its class. A
 * server that refuses us says why with an SQLSTATE (28P01 bad password:
 * configuration; 57P03 starting up: transient); no SQLSTATE means the
 * server was not reached, which is transient. */
enum pg_class pg_connect_error(PGconn *pg, char *msg, size_t len);
/* Blocking connect for start-up work. Returns NULL with *cls and msg set. */
PGconn *pg_connect(const struct config *cfg, enum pg_class *cls, char *msg, size_t len);

#endif

/* Opening a PostgreSQL connection from POSTGRES_DSN, with the settings
 * sluice relies on (UTF8 client encoding for binary COPY of text). */
#ifndef SLUICE_PG_CONNECT_H
#define SLUICE_PG_CONNECT_H

#include <libpq-fe.h>
#include <stddef.h>

#include "config.h"

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
/* Blocking connect; returns NULL after logging why, naming POSTGRES_DSN. */
PGconn *pg_connect(const struct config *cfg);

#endif

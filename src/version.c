/* --version: the linked libraries are reported from their run-time version
 * calls where they have one, so a mismatched shared library shows up here. */
#include "version.h"

#include <amqp.h>
#include <libpq-fe.h>
#include <mimalloc.h>
#include <openssl/crypto.h>

#ifndef LIBURING_VERSION
#define LIBURING_VERSION "unknown"
#endif

void version_print(FILE *out)
{
	int pq = PQlibVersion();
	int mi = mi_version();
	fprintf(out,
		"sluice %s\n"
		"  librabbitmq %s\n"
		"  libpq %d.%d\n"
		"  liburing %s (build time)\n"
		"  mimalloc %d.%d.%d\n"
		"  %s\n",
		SLUICE_VERSION, amqp_version(), pq / 10000, pq % 10000, LIBURING_VERSION,
		mi / 100, (mi / 10) % 10, mi % 10, OpenSSL_version(OPENSSL_VERSION));
}

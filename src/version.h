/* Version reporting: sluice's own and the linked libraries' (--version). */
#ifndef SLUICE_VERSION_H
#define SLUICE_VERSION_H

#include <stdio.h>

#define SLUICE_VERSION "0.1.0"

void version_print(FILE *out);

#endif

/* Health file writer and probe; see health.h. A file rather than a port:
 * it needs no listener, and the probe needs no network. */
#include "obs/health.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int health_write(const char *path, const char *line)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	int ok = fprintf(f, "%s\n", line) > 0;
	ok &= fclose(f) == 0;
	if (!ok || rename(tmp, path) != 0)
		return -(errno ? errno : EIO);
	return 0;
}

int health_probe(const char *path, int max_age_s)
{
	char line[256] = "";
	struct stat st;
	if (!path || !path[0]) {
		fprintf(stderr, "unhealthy: no health file (set SLUICE_HEALTH_FILE)\n");
		return 1;
	}
	FILE *f = fopen(path, "r");
	if (!f || fstat(fileno(f), &st) != 0) {
		fprintf(stderr, "unhealthy: cannot read %s: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		return 1;
	}
	if (!fgets(line, sizeof(line), f))
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\n")] = '\0';
	long age = (long)(time(NULL) - st.st_mtime);
	if (age > max_age_s) {
		fprintf(stderr, "unhealthy: %s not updated for %ld s (is sluice running?)\n", path,
			age);
		return 1;
	}
	if (strcmp(line, "ok") != 0) {
		fprintf(stderr, "unhealthy: %s\n", line[0] ? line : "empty health file");
		return 1;
	}
	return 0;
}

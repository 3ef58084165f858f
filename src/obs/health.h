/* Health for probes that have no shell (distroless): the running sluice
 * rewrites a small file every second; `sluice --health-check` reads it. */
#ifndef SLUICE_OBS_HEALTH_H
#define SLUICE_OBS_HEALTH_H

/* Replace the file at path with one line: "ok" or why not (atomically:
 * write a temporary file, then rename). Returns 0 or -errno. */
int health_write(const char *path, const char *line);
/* The probe: 0 when the file says "ok" and was written within max_age_s
 * seconds, else 1 with the reason on stderr. */
int health_probe(const char *path, int max_age_s);

#endif

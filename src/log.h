/* Logging: one line per event on stderr, with a timestamp, level and the
 * thread's context ("main", "shard 2"). The macros test the level before the
 * arguments are evaluated, so debug logging costs a branch when it is off. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern enum log_level log_threshold;

/* Name this thread's lines, e.g. "shard 3"; the string must outlive the thread. */
void log_set_context(const char *ctx);
void log_emit(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Parse "error|warn|info|debug"; returns -1 when the name is unknown. */
int log_level_parse(const char *name);

#define log_at(level, ...)                                                     \
	do {                                                                   \
		if ((level) <= log_threshold)                                  \
			log_emit((level), __VA_ARGS__);                        \
	} while (0)

#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)

#endif

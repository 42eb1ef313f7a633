/* log.h - leveled log lines on stderr (and optionally a file), from any
 * thread. Never stdout: in `serve` mode stdout is the rpc channel. */
#ifndef GPT2_LOG_H
#define GPT2_LOG_H

typedef enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level;

/* "error" | "warn" | "info" | "debug" -> level; -1 if unknown. */
int log_parse_level(const char *s);

/* Set the level and an optional file to append to (NULL: stderr only).
 * 0, or -1 when the file cannot be opened. */
int log_init(log_level level, const char *path);
void log_close(void);

void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif

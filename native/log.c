/* log.c - see log.h. One mutex keeps lines whole across threads. */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static log_level cur = LOG_INFO;
static FILE *file;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static const char *const names[] = {"error", "warn", "info", "debug"};

int log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

int log_init(log_level level, const char *path)
{
    cur = level;
    if (path && !(file = fopen(path, "a"))) return -1;
    return 0;
}

void log_close(void)
{
    pthread_mutex_lock(&mu);
    if (file) fclose(file);
    file = NULL;
    pthread_mutex_unlock(&mu);
}

void log_msg(log_level level, const char *fmt, ...)
{
    if (level > cur) return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - n, ".%03ld gpt2[%s] ", ts.tv_nsec / 1000000,
                  names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&mu);
    fprintf(stderr, "%s\n", line);
    if (file) {
        fprintf(file, "%s\n", line);
        fflush(file);
    }
    pthread_mutex_unlock(&mu);
}

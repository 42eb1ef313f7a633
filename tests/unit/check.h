/* check.h - what every unit test file shares: CHECK counts a pass, or
 * prints the failure (file, line, condition, then printf-style detail) and
 * counts it; test_main.c holds the counts and prints them last. */
#ifndef GPT2_TEST_CHECK_H
#define GPT2_TEST_CHECK_H

#include <stdio.h>

extern int check_passed, check_failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            check_passed++;                                                \
        } else {                                                           \
            check_failed++;                                                \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

void kernel_tests(void); /* test_kernels.c */
void topk_tests(void);   /* test_topk.c */

#endif

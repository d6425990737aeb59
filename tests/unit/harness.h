/*
 * tests/unit/harness.h — a minimal unit-test harness: TEST(name) registers a function, CHECK()
 * records a failure with file:line and continues, main() runs every test in a fresh temporary
 * directory and prints "N passed, N failed".
 */
#ifndef VESSEL_TEST_HARNESS_H
#define VESSEL_TEST_HARNESS_H

#include <stdbool.h>
#include <stdio.h>

struct test_case {
    const char *name;
    void (*fn)(void);
    struct test_case *next;
};

void test_register(struct test_case *tc);
void test_fail(const char *file, int line, const char *expr);
/* Directory (created per test, removed after) where a test may create files. */
const char *test_dir(void);
/* test_dir() + "/" + name, in a static rotating buffer. */
const char *test_path(const char *name);

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    static struct test_case test_case_##name = {#name, test_##name, NULL};                         \
    __attribute__((constructor)) static void test_register_##name(void)                            \
    {                                                                                              \
        test_register(&test_case_##name);                                                          \
    }                                                                                              \
    static void test_##name(void)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if (!(expr))                                                                               \
            test_fail(__FILE__, __LINE__, #expr);                                                  \
    } while (0)

/* Check that a vessel call returned 0; on failure print the library's message. */
#define CHECK_OK(call)                                                                             \
    do {                                                                                           \
        int check_ok_rc_ = (call);                                                                 \
        if (check_ok_rc_ != 0) {                                                                   \
            fprintf(stderr, "  %s -> %d: %s\n", #call, check_ok_rc_, vs_error_message());         \
            test_fail(__FILE__, __LINE__, #call);                                                  \
        }                                                                                          \
    } while (0)

#endif

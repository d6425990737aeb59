/*
 * tests/unit/harness.c — runs the tests registered with TEST(), each in its own temp directory;
 * a test fails when any CHECK in it fails. Prints "N passed, N failed" and exits non-zero on any
 * failure. An argument runs only the tests whose name contains it.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vessel/util.h"

static struct test_case *tests;
static int current_failures;
static char current_dir[256];

void test_register(struct test_case *tc)
{
    /* keep registration order (constructors run in file order) */
    struct test_case **p = &tests;
    while (*p)
        p = &(*p)->next;
    *p = tc;
}

void test_fail(const char *file, int line, const char *expr)
{
    fprintf(stderr, "  FAIL %s:%d: %s\n", file, line, expr);
    current_failures++;
}

const char *test_dir(void)
{
    return current_dir;
}

const char *test_path(const char *name)
{
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof(bufs[0]), "%s/%s", current_dir, name);
    return b;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    for (struct test_case *tc = tests; tc; tc = tc->next) {
        if (argc > 1 && !strstr(tc->name, argv[1]))
            continue;
        snprintf(current_dir, sizeof(current_dir), "%s/vessel-test-XXXXXX", tmp);
        if (!mkdtemp(current_dir)) {
            perror("mkdtemp");
            return 2;
        }
        current_failures = 0;
        vs_error_clear();
        tc->fn();
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", current_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "  warning: could not remove %s\n", current_dir);
        if (current_failures) {
            printf("FAIL %s\n", tc->name);
            failed++;
        } else {
            printf("ok   %s\n", tc->name);
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/*
 * tests/unit/test-mgmt.c — unit tests of lib/mgmt without VMs: the SQLite store (define, replace,
 * uuid clashes, state transitions with their generation bumps, undefine of a running VM,
 * snapshots, reopen after close = what a restarted daemon sees, concurrent writers from threads
 * losing no update) and the HTTP request parser against well-formed and hostile heads (bare LF,
 * obs-fold, chunked, duplicate or huge Content-Length, NUL bytes, oversized heads, traversal),
 * the event rows the stream and the hooks read (ids, notify after commit, lifecycle names), the
 * bearer-token comparison and the client's refusal to talk TLS without a token; storage pools in
 * the store (and the migration of a version-1 store to them) and the volume rules of pool.c
 * (never overwrite, backing files and VM disks protected, running VMs named); the 'saved' state
 * of save/restore (the migration of a version-2 store keeping its snapshots, the state file's
 * path found and forgotten).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <sqlite3.h>
#include <unistd.h>

#include "harness.h"
#include "mgmt/mgmt-internal.h"
#include "vessel/mgmt.h"

static struct mgmt_store *open_store(void)
{
    struct mgmt_store *s = NULL;
    CHECK_OK(mgmt_store_open(test_path("vessel.db"), &s));
    return s;
}

TEST(store_define_get_list)
{
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    CHECK_OK(mgmt_store_define(s, "web1", "11111111-1111-4111-8111-111111111111", "name = web1\n",
                               false, false));
    CHECK_OK(mgmt_store_define(s, "db1", "22222222-2222-4222-8222-222222222222", "name = db1\n",
                               true, false));
    /* same name without replace: EEXIST; same uuid under another name: EEXIST */
    CHECK(mgmt_store_define(s, "web1", "33333333-3333-4333-8333-333333333333", "x", false, false) ==
          -EEXIST);
    CHECK(mgmt_store_define(s, "web2", "11111111-1111-4111-8111-111111111111", "x", false, false) ==
          -EEXIST);
    CHECK(strstr(vs_error_message(), "web1") != NULL);
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(s, "web1", &rec));
    CHECK(!strcmp(rec.state, "shutoff") && rec.pid == 0 && rec.last_exit == -1);
    CHECK(!strcmp(rec.definition, "name = web1\n"));
    mgmt_vm_record_free(&rec);
    CHECK(mgmt_store_get(s, "nope", &rec) == -ENOENT);
    struct mgmt_vm_record *list;
    size_t n;
    CHECK_OK(mgmt_store_list(s, &list, &n));
    CHECK(n == 2 && !strcmp(list[0].name, "db1") && list[0].autostart && !list[1].autostart);
    for (size_t i = 0; i < n; i++)
        mgmt_vm_record_free(&list[i]);
    free(list);
    /* replace keeps the row and bumps the generation */
    CHECK_OK(mgmt_store_define(s, "web1", "11111111-1111-4111-8111-111111111111",
                               "name = web1\nvcpus = 2\n", false, true));
    CHECK_OK(mgmt_store_get(s, "web1", &rec));
    CHECK(rec.generation == 1 && strstr(rec.definition, "vcpus = 2"));
    mgmt_vm_record_free(&rec);
    CHECK_OK(mgmt_store_check(s));
    mgmt_store_close(s);
}

TEST(store_states_and_reopen)
{
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    CHECK_OK(mgmt_store_define(s, "vm", "44444444-4444-4444-8444-444444444444", "name = vm\n",
                               false, false));
    CHECK_OK(mgmt_store_set_state(s, "vm", "running", 1234, 1233, -1, "", true));
    CHECK(mgmt_store_undefine(s, "vm") == -EBUSY);
    CHECK(mgmt_store_set_state(s, "ghost", "running", 1, 1, -1, NULL, true) == -ENOENT);
    mgmt_store_close(s);
    /* what a daemon restarted after kill -9 reads back */
    s = open_store();
    if (!s)
        return;
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(s, "vm", &rec));
    CHECK(!strcmp(rec.state, "running") && rec.pid == 1234 && rec.keeper_pid == 1233);
    CHECK(rec.boots == 1 && rec.started_at > 0 && rec.was_running);
    mgmt_vm_record_free(&rec);
    CHECK_OK(mgmt_store_set_state(s, "vm", "shutoff", 0, 0, 3, "guest crashed", false));
    CHECK_OK(mgmt_store_get(s, "vm", &rec));
    CHECK(!strcmp(rec.state, "shutoff") && rec.pid == 0 && rec.last_exit == 3);
    CHECK(!strcmp(rec.last_error, "guest crashed") && rec.started_at == 0 && !rec.was_running);
    mgmt_vm_record_free(&rec);
    /* the schema refuses states nobody knows */
    CHECK(mgmt_store_set_state(s, "vm", "levitating", 0, 0, -1, NULL, false) < 0);
    CHECK_OK(mgmt_store_snapshot_add(s, "vm", "s1", "name = vm\n"));
    CHECK(mgmt_store_snapshot_add(s, "vm", "s1", "x") == -EEXIST);
    char **names;
    size_t n;
    CHECK_OK(mgmt_store_snapshot_list(s, "vm", &names, &n));
    CHECK(n == 1 && !strcmp(names[0], "s1"));
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    CHECK_OK(mgmt_store_undefine(s, "vm"));
    /* snapshots go with their VM */
    CHECK_OK(mgmt_store_snapshot_list(s, "vm", &names, &n));
    CHECK(n == 0);
    free(names);
    CHECK_OK(mgmt_store_check(s));
    mgmt_store_close(s);
}

struct writer {
    struct mgmt_store *store;
    int index;
    int failures;
};

static void *writer_thread(void *arg)
{
    struct writer *w = arg;
    char name[32], uuid[37];
    snprintf(name, sizeof(name), "t%d", w->index);
    snprintf(uuid, sizeof(uuid), "%08x-0000-4000-8000-000000000000", (unsigned)w->index);
    if (mgmt_store_define(w->store, name, uuid, "name = t\n", false, false))
        w->failures++;
    for (int i = 0; i < 20; i++)
        if (mgmt_store_set_state(w->store, name, i % 2 ? "shutoff" : "running", i, i, -1, NULL,
                                 i % 2 == 0) ||
            mgmt_store_set_autostart(w->store, "shared", i % 2))
            w->failures++;
    return NULL;
}

TEST(store_concurrent_writers_lose_nothing)
{
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    CHECK_OK(
        mgmt_store_define(s, "shared", "55555555-5555-4555-8555-555555555555", "x", false, false));
    enum { THREADS = 16 };
    pthread_t t[THREADS];
    struct writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct writer){.store = s, .index = i};
        pthread_create(&t[i], NULL, writer_thread, &w[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].failures == 0);
    }
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(s, "shared", &rec));
    CHECK(rec.generation == THREADS * 20); /* every update counted */
    mgmt_vm_record_free(&rec);
    CHECK_OK(mgmt_store_get(s, "t7", &rec));
    CHECK(rec.generation == 20 && rec.boots == 10);
    mgmt_vm_record_free(&rec);
    CHECK_OK(mgmt_store_check(s));
    mgmt_store_close(s);
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

static int parse(const char *text, struct mgmt_http_request *req, int *status)
{
    return mgmt_http_parse_head(text, strlen(text), req, status);
}

TEST(http_good_requests)
{
    struct mgmt_http_request req;
    int status;
    CHECK(parse("GET /v1/vms?all=1 HTTP/1.1\r\nHost: x\r\n\r\n", &req, &status) == 1);
    CHECK(!strcmp(req.method, "GET") && !strcmp(req.path, "/v1/vms") &&
          !strcmp(req.query, "all=1"));
    const char *post = "POST /v1/vms/web%2D1/start HTTP/1.0\r\nContent-Length: 5\r\n"
                       "Content-Type: text/plain\r\n\r\nhello";
    CHECK(parse(post, &req, &status) == 1);
    CHECK(!strcmp(req.path, "/v1/vms/web-1/start") && req.content_length == 5);
    CHECK(req.head_len == strlen(post) - 5 && !strcmp(req.content_type, "text/plain"));
    /* no Content-Length: no body */
    CHECK(parse("POST /v1/vms/a/destroy HTTP/1.1\r\n\r\n", &req, &status) == 1);
    CHECK(req.content_length == 0);
    /* incomplete: need more */
    CHECK(parse("GET /v1/vms HTTP/1.1\r\nHost:", &req, &status) == 0);
    CHECK(parse("", &req, &status) == 0);
    char value[64];
    CHECK(mgmt_http_query_get("a=1&name=x%20y&b", "name", value, sizeof(value)));
    CHECK(!strcmp(value, "x y"));
    CHECK(mgmt_http_query_get("a=1&name=x%20y&b", "b", value, sizeof(value)) && !value[0]);
    CHECK(!mgmt_http_query_get("a=1", "name", value, sizeof(value)));
    CHECK(!mgmt_http_query_get("name=%zz", "name", value, sizeof(value)));
    CHECK(!mgmt_http_query_get("name=%00", "name", value, sizeof(value)));
    CHECK(!mgmt_http_query_get("name=%4", "name", value, sizeof(value)));
}

static int hostile(const char *text, size_t len)
{
    struct mgmt_http_request req;
    int status = 0;
    int rc = mgmt_http_parse_head(text, len, &req, &status);
    if (rc >= 0) {
        fprintf(stderr, "  accepted: %.60s\n", text);
        return 0;
    }
    if (!vs_error_message()[0] || strchr(vs_error_message(), '\n'))
        return -1; /* every rejection carries one line */
    return status;
}

#define HOSTILE(text) hostile(text, sizeof(text) - 1)

TEST(http_hostile_requests)
{
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\nHost: x\n\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nHost: x\r\n  folded\r\n\r\n") == 400);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 501);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n") ==
          400);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n") == 413);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n") == 413);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nContent-Length: -1\r\n\r\n") == 400);
    CHECK(HOSTILE("POST /v1/vms HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nContent-Length: 3\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/2.0\r\n\r\n") == 505);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1 extra\r\n\r\n") == 505);
    CHECK(HOSTILE("GET v1/vms HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/../etc HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/%2e%2e/etc/ HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms/.. HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms/. HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1//vms HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/%00 HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nBad Name: x\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nNoColon\r\n\r\n") == 400);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nX: a\x01b\r\n\r\n") == 400);
    CHECK(HOSTILE("get /v1/vms HTTP/1.1\r\n\r\n") == 400);
    CHECK(HOSTILE("BREW /v1/vms HTTP/1.1\r\n\r\n") == 405);
    CHECK(HOSTILE("VERYLONGMETHOD /v1/vms HTTP/1.1\r\n\r\n") == 501);
    CHECK(HOSTILE("GET /v1/vms HTTP/1.1\r\nX: \0\r\n\r\n") == 400);
    /* too many header fields */
    char many[4096] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < MGMT_HTTP_MAX_HEADERS + 1; i++)
        strcat(many, "A: b\r\n");
    strcat(many, "\r\n");
    CHECK(hostile(many, strlen(many)) == 431);
    /* a head that never ends within the limit */
    size_t big = MGMT_HTTP_MAX_HEAD + 100;
    char *huge = malloc(big);
    if (huge) {
        memcpy(huge, "GET / HTTP/1.1\r\nX: ", 19);
        memset(huge + 19, 'a', big - 19);
        CHECK(hostile(huge, big) == 431);
        free(huge);
    }
    /* an over-long target */
    char uri[2100] = "GET /";
    memset(uri + 5, 'a', 1500);
    strcpy(uri + 1505, " HTTP/1.1\r\n\r\n");
    CHECK(hostile(uri, strlen(uri)) == 414);
}

TEST(http_client_without_daemon)
{
    int status;
    char *body;
    size_t len;
    CHECK(mgmt_client_request(test_path("nothing.sock"), "GET", "/v1/vms", NULL, NULL, 0, &status,
                              &body, &len) < 0);
    CHECK(strstr(vs_error_message(), "cannot reach vesseld") != NULL);
    CHECK(!strcmp(mgmt_client_socket_path("unix:/x/y.sock"), "/x/y.sock"));
}

struct seen_events {
    int count;
    int64_t last_id;
    char last_event[32];
};

static void count_event(void *arg, const struct mgmt_event *ev)
{
    struct seen_events *seen = arg;
    seen->count++;
    seen->last_id = ev->id;
    snprintf(seen->last_event, sizeof(seen->last_event), "%s", ev->event);
}

TEST(store_events_notify_and_since)
{
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    struct seen_events seen = {0};
    mgmt_store_set_notify(s, count_event, &seen);
    int64_t before = mgmt_store_last_event_id(s);
    CHECK_OK(mgmt_store_define(s, "ev", "55555555-5555-4555-8555-555555555555", "name = ev\n",
                               false, false));
    CHECK(seen.count == 1 && !strcmp(seen.last_event, "defined"));
    CHECK_OK(mgmt_store_transition(s, "ev", "running", "started", 10, 9, -1, "", true));
    CHECK(seen.count == 2 && !strcmp(seen.last_event, "started"));
    CHECK_OK(mgmt_store_set_state(s, "ev", "shutoff", 0, 0, 0, "", false));
    CHECK(seen.count == 3 && !strcmp(seen.last_event, "shutoff"));
    /* a failed transaction tells nobody */
    CHECK(mgmt_store_set_state(s, "ghost", "running", 1, 1, -1, NULL, true) == -ENOENT);
    CHECK(seen.count == 3);
    CHECK(mgmt_store_last_event_id(s) == seen.last_id);
    struct mgmt_event *evs;
    size_t n;
    CHECK_OK(mgmt_store_events_since(s, before, 10, &evs, &n));
    CHECK(n == 3 && evs[0].id < evs[1].id && evs[1].id < evs[2].id);
    CHECK(n == 3 && !strcmp(evs[1].event, "started") && !strcmp(evs[1].vm, "ev"));
    free(evs);
    CHECK_OK(mgmt_store_events_since(s, before, 2, &evs, &n));
    CHECK(n == 2);
    free(evs);
    CHECK_OK(mgmt_store_events_since(s, seen.last_id, 10, &evs, &n));
    CHECK(n == 0);
    free(evs);
    mgmt_store_set_notify(s, NULL, NULL);
    CHECK_OK(mgmt_store_event(s, "ev", "host-disk-low", "x"));
    CHECK(seen.count == 3);
    mgmt_store_close(s);
}

TEST(auth_token_compare_and_header)
{
    const char *token = "0123456789abcdef0123";
    CHECK(mgmt_token_matches("Bearer 0123456789abcdef0123", token));
    CHECK(!mgmt_token_matches("Bearer 0123456789abcdef012", token));
    CHECK(!mgmt_token_matches("Bearer 0123456789abcdef01234", token));
    CHECK(!mgmt_token_matches("bearer 0123456789abcdef0123", token));
    CHECK(!mgmt_token_matches("", token));
    CHECK(!mgmt_token_matches("Bearer ", ""));
    CHECK(!mgmt_token_matches("Basic 0123456789abcdef0123", token));
    struct mgmt_http_request req;
    int status;
    const char ok_head[] = "GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer abc  \r\n\r\n";
    CHECK(mgmt_http_parse_head(ok_head, strlen(ok_head), &req, &status) == 1);
    CHECK(!strcmp(req.authorization, "Bearer abc"));
    const char none[] = "GET /v1/vms HTTP/1.1\r\n\r\n";
    CHECK(mgmt_http_parse_head(none, strlen(none), &req, &status) == 1 && !req.authorization[0]);
    char big[600] = "GET / HTTP/1.1\r\nAuthorization: Bearer ";
    size_t l = strlen(big);
    memset(big + l, 'a', 400);
    strcpy(big + l + 400, "\r\n\r\n");
    CHECK(mgmt_http_parse_head(big, strlen(big), &req, &status) < 0 && status == 431);
    /* the client never sends a request over TLS without a token */
    CHECK_OK(mgmt_client_set_tls(NULL, NULL));
    unsetenv("VESSEL_TOKEN");
    size_t len;
    char *body;
    CHECK(mgmt_client_request("tls:127.0.0.1:1", "GET", "/v1/vms", NULL, NULL, 0, &status, &body,
                              &len) == -EACCES);
    CHECK(strstr(vs_error_message(), "token") != NULL);
    CHECK_OK(mgmt_client_set_tls(NULL, "0123456789abcdef"));
    CHECK(mgmt_client_request("tls:127.0.0.1:1", "GET", "/v1/vms", NULL, NULL, 0, &status, &body,
                              &len) < 0);
    CHECK(mgmt_client_request("tls:nonsense", "GET", "/v1/vms", NULL, NULL, 0, &status, &body,
                              &len) == -EINVAL);
    CHECK_OK(mgmt_client_set_tls(NULL, NULL));
}

TEST(store_pools_define_list_undefine)
{
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    struct seen_events seen = {0};
    mgmt_store_set_notify(s, count_event, &seen);
    CHECK_OK(mgmt_store_pool_define(s, "images", "/srv/images"));
    CHECK(seen.count == 1 && !strcmp(seen.last_event, "pool-defined"));
    CHECK_OK(mgmt_store_pool_define(s, "archive", "/srv/archive"));
    /* a name or a directory belongs to one pool only; the message names the owner */
    CHECK(mgmt_store_pool_define(s, "images", "/srv/other") == -EEXIST);
    CHECK(strstr(vs_error_message(), "/srv/images") != NULL);
    CHECK(mgmt_store_pool_define(s, "again", "/srv/images") == -EEXIST);
    CHECK(strstr(vs_error_message(), "'images'") != NULL);
    CHECK(seen.count == 2); /* refused definitions tell nobody */
    struct mgmt_pool_record rec;
    CHECK_OK(mgmt_store_pool_get(s, "images", &rec));
    CHECK(!strcmp(rec.path, "/srv/images") && rec.created_at > 0);
    CHECK(mgmt_store_pool_get(s, "nope", &rec) == -ENOENT);
    struct mgmt_pool_record *list;
    size_t n;
    CHECK_OK(mgmt_store_pool_list(s, &list, &n));
    CHECK(n == 2 && !strcmp(list[0].name, "archive") && !strcmp(list[1].name, "images"));
    free(list);
    CHECK_OK(mgmt_store_pool_undefine(s, "archive"));
    CHECK(seen.count == 3 && !strcmp(seen.last_event, "pool-undefined"));
    CHECK(mgmt_store_pool_undefine(s, "archive") == -ENOENT);
    mgmt_store_set_notify(s, NULL, NULL);
    mgmt_store_close(s);
    /* a restarted daemon sees the pools it had */
    s = open_store();
    if (!s)
        return;
    CHECK_OK(mgmt_store_pool_list(s, &list, &n));
    CHECK(n == 1 && !strcmp(list[0].name, "images"));
    free(list);
    CHECK_OK(mgmt_store_check(s));
    mgmt_store_close(s);
}

TEST(store_migrates_v1_to_pools)
{
    /* a store written by a vesseld before pools: schema version 1, no pools table */
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    CHECK_OK(mgmt_store_define(s, "old", "66666666-6666-4666-8666-666666666666", "name = old\n",
                               false, false));
    mgmt_store_close(s);
    sqlite3 *db;
    CHECK(sqlite3_open(test_path("vessel.db"), &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "DROP TABLE pools; PRAGMA user_version=1", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(db);
    s = open_store();
    if (!s)
        return;
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(s, "old", &rec));
    mgmt_vm_record_free(&rec);
    CHECK_OK(mgmt_store_pool_define(s, "p", "/srv/p"));
    mgmt_store_close(s);
    CHECK(sqlite3_open(test_path("vessel.db"), &db) == SQLITE_OK);
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == MGMT_SCHEMA_VERSION);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

TEST(store_migrates_v2_to_saved)
{
    /* a version-2 store (no 'saved' state, no saved_path) with a VM and a snapshot: the vms table
     * is rebuilt and the snapshot row must survive it (foreign keys are off meanwhile) */
    struct mgmt_store *s = open_store();
    if (!s)
        return;
    CHECK_OK(mgmt_store_define(s, "w", "77777777-7777-4777-8777-777777777777", "name = w\n", false,
                               false));
    CHECK_OK(mgmt_store_snapshot_add(s, "w", "before", "name = w\n"));
    mgmt_store_close(s);
    sqlite3 *db;
    CHECK(sqlite3_open(test_path("vessel.db"), &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db,
                       "PRAGMA foreign_keys=OFF; BEGIN;"
                       "CREATE TABLE v2 (name TEXT PRIMARY KEY, uuid TEXT NOT NULL UNIQUE,"
                       " definition TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'shutoff'"
                       " CHECK (state IN ('shutoff','running','paused','crashed')),"
                       " pid INTEGER NOT NULL DEFAULT 0, keeper_pid INTEGER NOT NULL DEFAULT 0,"
                       " started_at INTEGER NOT NULL DEFAULT 0, boots INTEGER NOT NULL DEFAULT 0,"
                       " generation INTEGER NOT NULL DEFAULT 0,"
                       " last_exit INTEGER NOT NULL DEFAULT -1,"
                       " last_error TEXT NOT NULL DEFAULT '',"
                       " autostart INTEGER NOT NULL DEFAULT 0,"
                       " was_running INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,"
                       " updated_at INTEGER NOT NULL);"
                       "INSERT INTO v2 SELECT name, uuid, definition, state, pid, keeper_pid,"
                       " started_at, boots, generation, last_exit, last_error, autostart,"
                       " was_running, created_at, updated_at FROM vms;"
                       "DROP TABLE vms; ALTER TABLE v2 RENAME TO vms; COMMIT;"
                       "PRAGMA user_version=2",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    s = open_store();
    if (!s)
        return;
    char **names = NULL;
    size_t n = 0;
    CHECK_OK(mgmt_store_snapshot_list(s, "w", &names, &n));
    CHECK(n == 1 && names && !strcmp(names[0], "before"));
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    /* saved: the state, the path, the event; found by its file; any transition forgets it */
    CHECK_OK(mgmt_store_set_state(s, "w", "running", 10, 9, -1, "", true));
    CHECK_OK(mgmt_store_saved(s, "w", "/srv/w.save", "0123abcd", 5));
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(s, "w", &rec));
    CHECK(!strcmp(rec.state, "saved") && !strcmp(rec.saved_path, "/srv/w.save") && rec.pid == 0 &&
          rec.last_exit == 5 && !rec.was_running && !strcmp(rec.saved_id, "0123abcd"));
    mgmt_vm_record_free(&rec);
    struct mgmt_event *evs = NULL;
    size_t count = 0;
    CHECK_OK(mgmt_store_events_since(s, 0, 100, &evs, &count));
    CHECK(count > 0 && !strcmp(evs[count - 1].event, "saved") &&
          !strcmp(evs[count - 1].detail, "/srv/w.save"));
    free(evs);
    char name[65] = "";
    CHECK_OK(mgmt_store_find_saved(s, "/srv/w.save", name, sizeof(name)));
    CHECK(!strcmp(name, "w"));
    CHECK(mgmt_store_find_saved(s, "/srv/other.save", name, sizeof(name)) == -ENOENT);
    CHECK(mgmt_store_undefine(s, "w") == -EBUSY); /* destroy (discard) first */
    CHECK_OK(mgmt_store_transition(s, "w", "running", "restored", 11, 10, -1, "", true));
    CHECK_OK(mgmt_store_get(s, "w", &rec));
    CHECK(!strcmp(rec.state, "running") && rec.saved_path[0] == 0);
    mgmt_vm_record_free(&rec);
    CHECK(mgmt_store_find_saved(s, "/srv/w.save", name, sizeof(name)) == -ENOENT);
    /* foreign keys are back on: undefine still cascades to the snapshots */
    CHECK_OK(mgmt_store_set_state(s, "w", "shutoff", 0, 0, 0, "", false));
    CHECK_OK(mgmt_store_undefine(s, "w"));
    CHECK_OK(mgmt_store_snapshot_list(s, "w", &names, &n));
    CHECK(n == 0);
    free(names);
    CHECK_OK(mgmt_store_check(s));
    mgmt_store_close(s);
}

/* A daemon with a store and no threads: enough for the pool and volume functions. */
static struct mgmt_daemon *pool_daemon(void)
{
    struct mgmt_daemon *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    pthread_mutex_init(&d->claims_lock, NULL);
    d->store = open_store();
    if (!d->store) {
        free(d);
        return NULL;
    }
    return d;
}

static void pool_daemon_free(struct mgmt_daemon *d)
{
    mgmt_disks_release_all(d);
    mgmt_store_close(d->store);
    pthread_mutex_destroy(&d->claims_lock);
    free(d);
}

static const char *volume_string(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "";
}

static int64_t volume_int(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : -1;
}

TEST(pool_volumes_create_use_delete)
{
    struct mgmt_daemon *d = pool_daemon();
    if (!d)
        return;
    json_object *o = NULL;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/pool", test_dir());
    CHECK(mgmt_pool_define(d, "p", "relative/dir", &o) == -EINVAL);
    CHECK_OK(mgmt_pool_define(d, "p", dir, &o)); /* the directory is created */
    CHECK(!strcmp(volume_string(o, "state"), "available") && volume_int(o, "volumes") == 0 &&
          volume_int(o, "capacity") > 0);
    json_object_put(o);
    struct mgmt_volume_params raw = {
        .pool = "p", .name = "base.raw", .format = "raw", .size = 4 << 20, .size_given = true};
    CHECK_OK(mgmt_volume_create(d, &raw, &o));
    CHECK(!strcmp(volume_string(o, "format"), "raw") && volume_int(o, "virtual_size") == 4 << 20);
    json_object_put(o);
    CHECK(mgmt_volume_create(d, &raw, &o) == -EEXIST); /* never overwritten */
    struct mgmt_volume_params bad = {.pool = "p", .name = "../x", .size = 1, .size_given = true};
    CHECK(mgmt_volume_create(d, &bad, &o) == -EINVAL);
    struct mgmt_volume_params over = {.pool = "p", .name = "top.qcow2", .backing = "base.raw"};
    CHECK_OK(mgmt_volume_create(d, &over, &o)); /* qcow2 by default, size from the backing */
    CHECK(!strcmp(volume_string(o, "format"), "qcow2") &&
          volume_int(o, "virtual_size") == 4 << 20 &&
          !strcmp(volume_string(o, "backing"), "base.raw"));
    json_object_put(o);
    struct mgmt_volume_params rawb = {
        .pool = "p", .name = "b.raw", .format = "raw", .backing = "base.raw"};
    CHECK(mgmt_volume_create(d, &rawb, &o) == -EINVAL);
    /* base.raw is top.qcow2's backing file: not deletable, not resizable */
    CHECK(mgmt_volume_delete(d, "p", "base.raw") == -EBUSY);
    CHECK(strstr(vs_error_message(), "top.qcow2") != NULL);
    CHECK(mgmt_volume_resize(d, "p", "base.raw", 8 << 20, false, &o) == -EBUSY);
    /* a defined VM on top.qcow2 holds it (and, through it, base.raw) */
    char *def = vs_asprintf("name = vm1\nmemory = 64M\n[disk]\nfile = %s/top.qcow2\n", dir);
    CHECK_OK(mgmt_store_define(d->store, "vm1", "77777777-7777-4777-8777-777777777777", def, false,
                               false));
    free(def);
    CHECK(mgmt_volume_delete(d, "p", "top.qcow2") == -EBUSY);
    CHECK(strstr(vs_error_message(), "VM 'vm1'") != NULL);
    CHECK(mgmt_pool_undefine(d, "p") == -EBUSY);
    CHECK(strstr(vs_error_message(), "vm1") != NULL);
    CHECK_OK(mgmt_volume_list(d, "p", &o));
    json_object *vols = NULL;
    CHECK(o && json_object_object_get_ex(o, "volumes", &vols) &&
          json_object_array_length(vols) == 2);
    if (vols && json_object_array_length(vols) == 2) {
        json_object *top = json_object_array_get_idx(vols, 1), *used;
        CHECK(!strcmp(volume_string(top, "name"), "top.qcow2"));
        CHECK(json_object_object_get_ex(top, "used_by", &used) &&
              json_object_array_length(used) == 1 &&
              !strcmp(json_object_get_string(json_object_array_get_idx(used, 0)), "vm1"));
    }
    json_object_put(o);
    /* running (claimed) volumes can't be resized; the error names the VM */
    struct vm_def *vm = NULL;
    struct mgmt_vm_record rec;
    CHECK_OK(mgmt_store_get(d->store, "vm1", &rec));
    CHECK_OK(vm_def_parse(rec.definition, strlen(rec.definition), "vm1", &vm));
    mgmt_vm_record_free(&rec);
    if (vm)
        CHECK_OK(mgmt_disks_claim(d, "vm1", vm, false));
    vm_def_free(vm);
    CHECK(mgmt_volume_resize(d, "p", "top.qcow2", 8 << 20, false, &o) == -EBUSY);
    CHECK(strstr(vs_error_message(), "running VM 'vm1'") != NULL);
    mgmt_disks_release(d, "vm1");
    CHECK_OK(mgmt_volume_resize(d, "p", "top.qcow2", 8 << 20, false, &o));
    CHECK(volume_int(o, "virtual_size") == 8 << 20);
    json_object_put(o);
    CHECK(mgmt_volume_resize(d, "p", "top.qcow2", 1 << 20, false, &o) == -EINVAL);
    CHECK_OK(mgmt_store_undefine(d->store, "vm1"));
    CHECK_OK(mgmt_volume_delete(d, "p", "top.qcow2"));
    CHECK_OK(mgmt_volume_delete(d, "p", "base.raw"));
    CHECK(mgmt_volume_delete(d, "p", "base.raw") == -ENOENT);
    CHECK_OK(mgmt_pool_undefine(d, "p"));
    CHECK(access(dir, F_OK) == 0); /* the directory stays */
    pool_daemon_free(d);
}

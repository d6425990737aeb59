/*
 * lib/mgmt/store.c — the daemon's memory: VM definitions, states and events in SQLite.
 *
 * The idea: every change is one short BEGIN IMMEDIATE … COMMIT transaction on a WAL database, so
 * a daemon killed at any instant leaves either the old or the new row, never half of one, and
 * readers never block the writer. One connection is shared by the daemon's threads behind a
 * mutex (SQLite's own serialisation can't keep two threads' transactions apart on one
 * connection). The schema version is PRAGMA user_version; migrations run in order at open.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "vessel/mgmt.h"

struct mgmt_store {
    sqlite3 *db;
    pthread_mutex_t lock;
    mgmt_event_notify_fn notify;
    void *notify_arg;
    bool has_pending; /* an event row written in the open transaction */
    struct mgmt_event pending;
};

static const char *const schema_v1 =
    "CREATE TABLE vms ("
    "  name TEXT PRIMARY KEY,"
    "  uuid TEXT NOT NULL UNIQUE,"
    "  definition TEXT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'shutoff'"
    "    CHECK (state IN ('shutoff','running','paused','crashed')),"
    "  pid INTEGER NOT NULL DEFAULT 0,"
    "  keeper_pid INTEGER NOT NULL DEFAULT 0,"
    "  started_at INTEGER NOT NULL DEFAULT 0,"
    "  boots INTEGER NOT NULL DEFAULT 0,"
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  last_exit INTEGER NOT NULL DEFAULT -1,"
    "  last_error TEXT NOT NULL DEFAULT '',"
    "  autostart INTEGER NOT NULL DEFAULT 0,"
    "  was_running INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  time INTEGER NOT NULL,"
    "  vm TEXT NOT NULL,"
    "  event TEXT NOT NULL,"
    "  detail TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE snapshots ("
    "  vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  definition TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (vm, name));";

/* v2: storage pools. A pool is a directory; its volumes are the files in it (not rows), so a file
 * copied in by hand is a volume too and nothing here can go stale. */
static const char *const schema_v2 = "CREATE TABLE pools ("
                                     "  name TEXT PRIMARY KEY,"
                                     "  path TEXT NOT NULL UNIQUE,"
                                     "  created_at INTEGER NOT NULL);";

/* v3: save/restore. A saved VM is a state of its own ('saved': not running, its memory in a state
 * file) and saved_path names that file. SQLite cannot change a CHECK constraint in place, so the
 * vms table is rebuilt (foreign keys are off meanwhile, so the snapshots rows stay). */
static const char *const schema_v3 =
    "CREATE TABLE vms_v3 ("
    "  name TEXT PRIMARY KEY,"
    "  uuid TEXT NOT NULL UNIQUE,"
    "  definition TEXT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'shutoff'"
    "    CHECK (state IN ('shutoff','running','paused','crashed','saved')),"
    "  pid INTEGER NOT NULL DEFAULT 0,"
    "  keeper_pid INTEGER NOT NULL DEFAULT 0,"
    "  started_at INTEGER NOT NULL DEFAULT 0,"
    "  boots INTEGER NOT NULL DEFAULT 0,"
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  last_exit INTEGER NOT NULL DEFAULT -1,"
    "  last_error TEXT NOT NULL DEFAULT '',"
    "  autostart INTEGER NOT NULL DEFAULT 0,"
    "  was_running INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  saved_path TEXT NOT NULL DEFAULT '');"
    "INSERT INTO vms_v3 (name, uuid, definition, state, pid, keeper_pid, started_at, boots,"
    "  generation, last_exit, last_error, autostart, was_running, created_at, updated_at)"
    "  SELECT name, uuid, definition, state, pid, keeper_pid, started_at, boots, generation,"
    "  last_exit, last_error, autostart, was_running, created_at, updated_at FROM vms;"
    "DROP TABLE vms;"
    "ALTER TABLE vms_v3 RENAME TO vms;";

/* v4: the id of the save in the state file (the file's own random id), so a state file that was
 * moved is restored only when it is the VM's latest save. */
static const char *const schema_v4 =
    "ALTER TABLE vms ADD COLUMN saved_id TEXT NOT NULL DEFAULT '';";

static int store_sql_error(struct mgmt_store *s, int rc, const char *what)
{
    int err = -EIO;
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        err = -EBUSY;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        err = -EEXIST;
    else if (rc == SQLITE_NOMEM)
        err = -ENOMEM;
    return vs_error(err, "store: %s: %s", what, sqlite3_errmsg(s->db));
}

static int store_exec(struct mgmt_store *s, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int err = vs_error(rc == SQLITE_BUSY ? -EBUSY : -EIO, "store: %s", msg ? msg : "error");
        sqlite3_free(msg);
        return err;
    }
    return 0;
}

static int store_begin(struct mgmt_store *s)
{
    pthread_mutex_lock(&s->lock);
    s->has_pending = false;
    int err = store_exec(s, "BEGIN IMMEDIATE");
    if (err)
        pthread_mutex_unlock(&s->lock);
    return err;
}

/* Commit when err == 0, else roll back; always releases the lock. Returns the final error. */
static int store_end(struct mgmt_store *s, int err)
{
    if (err == 0)
        err = store_exec(s, "COMMIT");
    if (err)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    /* tell listeners of a committed event once the lock is released (they may read the store) */
    bool tell = !err && s->has_pending && s->notify;
    struct mgmt_event ev;
    mgmt_event_notify_fn fn = s->notify;
    void *arg = s->notify_arg;
    if (tell)
        ev = s->pending;
    s->has_pending = false;
    pthread_mutex_unlock(&s->lock);
    if (tell)
        fn(arg, &ev);
    return err;
}

static int store_prepare(struct mgmt_store *s, const char *sql, sqlite3_stmt **st)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK)
        return store_sql_error(s, rc, "prepare");
    return 0;
}

/* Run a prepared statement to completion; returns the number of rows changed or -errno. */
static int store_step_done(struct mgmt_store *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    int err = rc == SQLITE_DONE ? sqlite3_changes(s->db) : store_sql_error(s, rc, what);
    sqlite3_finalize(st);
    return err;
}

int mgmt_store_open(const char *path, struct mgmt_store **out)
{
    struct mgmt_store *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        int err = vs_error(-EIO, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
        mgmt_store_close(s);
        return err;
    }
    sqlite3_busy_timeout(s->db, 5000);
    int err = store_exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                            "PRAGMA foreign_keys=ON;");
    if (err)
        goto fail;
    sqlite3_stmt *st;
    if ((err = store_prepare(s, "PRAGMA user_version", &st)))
        goto fail;
    int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    if (version > MGMT_SCHEMA_VERSION) {
        err = vs_error(-EPROTO, "%s: schema version %d is newer than this vesseld (%d)", path,
                       version, MGMT_SCHEMA_VERSION);
        goto fail;
    }
    /* each step in one transaction, so a crash leaves the previous version whole; v3 rebuilds
     * the vms table, and PRAGMA foreign_keys is a no-op inside a transaction: off around it */
    static const struct {
        const char *sql;
        bool no_foreign_keys;
    } steps[MGMT_SCHEMA_VERSION] = {
        {schema_v1, false}, {schema_v2, false}, {schema_v3, true}, {schema_v4, false}};
    for (int v = version; v < MGMT_SCHEMA_VERSION; v++) {
        if (steps[v].no_foreign_keys && (err = store_exec(s, "PRAGMA foreign_keys=OFF")))
            goto fail;
        if ((err = store_begin(s)))
            goto fail;
        char pragma[40];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version=%d", v + 1);
        err = store_exec(s, steps[v].sql);
        if (!err)
            err = store_exec(s, pragma);
        err = store_end(s, err);
        int fk = steps[v].no_foreign_keys ? store_exec(s, "PRAGMA foreign_keys=ON") : 0;
        if (err || (err = fk))
            goto fail;
    }
    *out = s;
    return 0;
fail:
    vs_error_prefix(err, "%s", path);
    mgmt_store_close(s);
    return err;
}

void mgmt_store_close(struct mgmt_store *s)
{
    if (!s)
        return;
    if (s->db)
        sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void mgmt_vm_record_free(struct mgmt_vm_record *rec)
{
    if (rec) {
        free(rec->definition);
        rec->definition = NULL;
    }
}

static int store_event_locked(struct mgmt_store *s, const char *name, const char *event,
                              const char *detail)
{
    sqlite3_stmt *st;
    int err = store_prepare(
        s, "INSERT INTO events (time, vm, event, detail) VALUES (?1, ?2, ?3, ?4)", &st);
    if (err)
        return err;
    sqlite3_bind_int64(st, 1, (int64_t)time(NULL));
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, event, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, detail ? detail : "", -1, SQLITE_STATIC);
    err = store_step_done(s, st, "event");
    if (err < 0)
        return err;
    struct mgmt_event *ev = &s->pending;
    ev->id = sqlite3_last_insert_rowid(s->db);
    ev->time = (int64_t)time(NULL);
    snprintf(ev->vm, sizeof(ev->vm), "%s", name);
    snprintf(ev->event, sizeof(ev->event), "%s", event);
    snprintf(ev->detail, sizeof(ev->detail), "%s", detail ? detail : "");
    s->has_pending = true;
    return 0;
}

int mgmt_store_define(struct mgmt_store *s, const char *name, const char *uuid,
                      const char *definition, bool autostart, bool replace)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    /* a uuid that belongs to another name is a clash whatever 'replace' says */
    if (!(err = store_prepare(s, "SELECT name FROM vms WHERE uuid = ?1 AND name != ?2", &st))) {
        sqlite3_bind_text(st, 1, uuid, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            err = vs_error(-EEXIST, "uuid %s already belongs to VM '%s'", uuid,
                           (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    int64_t now = (int64_t)time(NULL);
    if (!err && replace) {
        if (!(err = store_prepare(s,
                                  "UPDATE vms SET uuid = ?2, definition = ?3, autostart = ?4,"
                                  " generation = generation + 1, updated_at = ?5 WHERE name = ?1",
                                  &st))) {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, uuid, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, definition, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 4, autostart);
            sqlite3_bind_int64(st, 5, now);
            err = store_step_done(s, st, "update definition");
            if (err > 0)
                goto done; /* replaced */
        }
    }
    if (!err && !(err = store_prepare(s,
                                      "INSERT INTO vms (name, uuid, definition, autostart,"
                                      " created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                                      &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, uuid, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, definition, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 4, autostart);
        sqlite3_bind_int64(st, 5, now);
        err = store_step_done(s, st, "insert definition");
        if (err == -EEXIST)
            err = vs_error(-EEXIST, "VM '%s' is already defined", name);
    }
done:
    if (err >= 0)
        err = store_event_locked(s, name, "defined", uuid);
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_undefine(struct mgmt_store *s, const char *name)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s, "SELECT state FROM vms WHERE name = ?1", &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW)
            err = vs_error(-ENOENT, "no VM named '%s'", name);
        else if (strcmp((const char *)sqlite3_column_text(st, 0), "shutoff") &&
                 strcmp((const char *)sqlite3_column_text(st, 0), "crashed"))
            err = vs_error(-EBUSY, "VM '%s' is %s; destroy it first", name,
                           (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    if (!err && !(err = store_prepare(s, "DELETE FROM vms WHERE name = ?1", &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        err = store_step_done(s, st, "delete");
    }
    if (err >= 0)
        err = store_event_locked(s, name, "undefined", NULL);
    return store_end(s, err < 0 ? err : 0);
}

#define RECORD_COLUMNS                                                                             \
    "name, uuid, definition, state, pid, keeper_pid, started_at, boots, generation, last_exit,"    \
    " last_error, autostart, was_running, saved_path, saved_id"

static int record_from_row(sqlite3_stmt *st, void *out)
{
    struct mgmt_vm_record *r = out;
    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof(r->name), "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(r->uuid, sizeof(r->uuid), "%s", (const char *)sqlite3_column_text(st, 1));
    r->definition = vs_strdup((const char *)sqlite3_column_text(st, 2));
    snprintf(r->state, sizeof(r->state), "%s", (const char *)sqlite3_column_text(st, 3));
    r->pid = sqlite3_column_int64(st, 4);
    r->keeper_pid = sqlite3_column_int64(st, 5);
    r->started_at = sqlite3_column_int64(st, 6);
    r->boots = sqlite3_column_int64(st, 7);
    r->generation = sqlite3_column_int64(st, 8);
    r->last_exit = sqlite3_column_int64(st, 9);
    snprintf(r->last_error, sizeof(r->last_error), "%s", (const char *)sqlite3_column_text(st, 10));
    r->autostart = sqlite3_column_int(st, 11) != 0;
    r->was_running = sqlite3_column_int(st, 12) != 0;
    snprintf(r->saved_path, sizeof(r->saved_path), "%s", (const char *)sqlite3_column_text(st, 13));
    snprintf(r->saved_id, sizeof(r->saved_id), "%s", (const char *)sqlite3_column_text(st, 14));
    return r->definition ? 0 : -ENOMEM;
}

/* Under the lock: the first row of SQL with ?1 bound to KEY, through FROM_ROW into OUT. Returns
 * what FROM_ROW returns, 1 when there is no such row (the caller says what is missing), or -errno
 * with WHAT naming the query. */
static int store_get_row(struct mgmt_store *s, const char *sql, const char *key, const char *what,
                         int (*from_row)(sqlite3_stmt *, void *), void *out)
{
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int err = store_prepare(s, sql, &st);
    if (!err) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            err = from_row(st, out);
        else if (rc == SQLITE_DONE)
            err = 1;
        else
            err = store_sql_error(s, rc, what);
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    return err;
}

/* Under the lock: every row of SQL through FROM_ROW into a growing array of SIZE-byte elements,
 * *list (malloc'ed) and *n. On an error they still hold the rows read, for the caller to free. */
static int store_list_rows(struct mgmt_store *s, const char *sql, const char *what, size_t size,
                           int (*from_row)(sqlite3_stmt *, void *), void **list, size_t *n)
{
    *list = NULL;
    *n = 0;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = NULL;
    int err = store_prepare(s, sql, &st);
    size_t cap = 0;
    int rc = SQLITE_DONE;
    while (!err && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            void *bigger = realloc(*list, cap * size);
            if (!bigger) {
                err = vs_error(-ENOMEM, "store: %s: out of memory", what);
                break;
            }
            *list = bigger;
        }
        err = from_row(st, (char *)*list + (*n)++ * size);
    }
    if (!err && rc != SQLITE_DONE)
        err = store_sql_error(s, rc, what);
    if (st)
        sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return err;
}

int mgmt_store_get(struct mgmt_store *s, const char *name, struct mgmt_vm_record *out)
{
    int err = store_get_row(s, "SELECT " RECORD_COLUMNS " FROM vms WHERE name = ?1", name, "get",
                            record_from_row, out);
    return err == 1 ? vs_error(-ENOENT, "no VM named '%s'", name) : err;
}

int mgmt_store_list(struct mgmt_store *s, struct mgmt_vm_record **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    void *rows;
    size_t n;
    int err = store_list_rows(s, "SELECT " RECORD_COLUMNS " FROM vms ORDER BY name", "list",
                              sizeof(**out), record_from_row, &rows, &n);
    struct mgmt_vm_record *list = rows;
    if (err) {
        for (size_t i = 0; i < n; i++)
            mgmt_vm_record_free(&list[i]);
        free(list);
        return err;
    }
    *out = list;
    *count = n;
    return 0;
}

int mgmt_store_set_state(struct mgmt_store *s, const char *name, const char *state, int64_t pid,
                         int64_t keeper_pid, int64_t last_exit, const char *error, bool count_boot)
{
    return mgmt_store_transition(s, name, state, NULL, pid, keeper_pid, last_exit, error,
                                 count_boot);
}

int mgmt_store_transition(struct mgmt_store *s, const char *name, const char *state,
                          const char *event, int64_t pid, int64_t keeper_pid, int64_t last_exit,
                          const char *error, bool count_boot)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    bool live = !strcmp(state, "running") || !strcmp(state, "paused");
    if (!(err = store_prepare(
              s,
              "UPDATE vms SET state = ?2, pid = ?3, keeper_pid = ?4,"
              " started_at = CASE WHEN ?5 THEN ?6 WHEN ?7 THEN started_at ELSE 0 END,"
              " boots = boots + ?5, last_exit = CASE WHEN ?8 >= 0 THEN ?8 ELSE last_exit END,"
              " last_error = COALESCE(?9, last_error), was_running = ?7,"
              " saved_path = '', saved_id = '',"
              " generation = generation + 1, updated_at = ?6 WHERE name = ?1",
              &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, pid);
        sqlite3_bind_int64(st, 4, keeper_pid);
        sqlite3_bind_int(st, 5, count_boot);
        sqlite3_bind_int64(st, 6, (int64_t)time(NULL));
        sqlite3_bind_int(st, 7, live);
        sqlite3_bind_int64(st, 8, last_exit);
        if (error)
            sqlite3_bind_text(st, 9, error, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 9);
        err = store_step_done(s, st, "set state");
        if (err == 0)
            err = vs_error(-ENOENT, "no VM named '%s'", name);
    }
    if (err >= 0)
        err = store_event_locked(s, name, event ? event : state, error);
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_saved(struct mgmt_store *s, const char *name, const char *path, const char *saved_id,
                     int64_t last_exit)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s,
                              "UPDATE vms SET state = 'saved', saved_path = ?2, pid = 0,"
                              " keeper_pid = 0, started_at = 0, last_exit = ?3, last_error = '',"
                              " was_running = 0, generation = generation + 1, updated_at = ?4,"
                              " saved_id = ?5 WHERE name = ?1",
                              &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, last_exit);
        sqlite3_bind_int64(st, 4, (int64_t)time(NULL));
        sqlite3_bind_text(st, 5, saved_id ? saved_id : "", -1, SQLITE_STATIC);
        err = store_step_done(s, st, "saved");
        if (err == 0)
            err = vs_error(-ENOENT, "no VM named '%s'", name);
    }
    if (err >= 0)
        err = store_event_locked(s, name, "saved", path);
    return store_end(s, err < 0 ? err : 0);
}

struct name_buf {
    char *name;
    size_t len;
};

static int name_from_row(sqlite3_stmt *st, void *out)
{
    struct name_buf *b = out;
    snprintf(b->name, b->len, "%s", (const char *)sqlite3_column_text(st, 0));
    return 0;
}

int mgmt_store_find_saved(struct mgmt_store *s, const char *path, char *name, size_t len)
{
    struct name_buf buf = {name, len};
    int err = store_get_row(s, "SELECT name FROM vms WHERE state = 'saved' AND saved_path = ?1",
                            path, "find saved", name_from_row, &buf);
    return err == 1 ? vs_error(-ENOENT, "%s: no VM was saved to this file", path) : err;
}

int mgmt_store_set_autostart(struct mgmt_store *s, const char *name, bool on)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s,
                              "UPDATE vms SET autostart = ?2, generation = generation + 1"
                              " WHERE name = ?1",
                              &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, on);
        err = store_step_done(s, st, "autostart");
        if (err == 0)
            err = vs_error(-ENOENT, "no VM named '%s'", name);
    }
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_event(struct mgmt_store *s, const char *name, const char *event, const char *detail)
{
    int err = store_begin(s);
    if (err)
        return err;
    return store_end(s, store_event_locked(s, name, event, detail));
}

int mgmt_store_snapshot_add(struct mgmt_store *s, const char *vm, const char *snap,
                            const char *definition)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s,
                              "INSERT INTO snapshots (vm, name, definition, created_at)"
                              " VALUES (?1, ?2, ?3, ?4)",
                              &st))) {
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, snap, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, definition, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)time(NULL));
        err = store_step_done(s, st, "snapshot");
        if (err == -EEXIST)
            err = vs_error(-EEXIST, "VM '%s' already has a snapshot '%s'", vm, snap);
    }
    if (err >= 0)
        err = store_event_locked(s, vm, "snapshot-created", snap);
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_snapshot_get(struct mgmt_store *s, const char *vm, const char *snap,
                            char **definition)
{
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int err = store_prepare(s, "SELECT definition FROM snapshots WHERE vm = ?1 AND name = ?2", &st);
    if (!err) {
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, snap, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *definition = vs_strdup((const char *)sqlite3_column_text(st, 0));
            err = *definition ? 0 : -ENOMEM;
        } else {
            err = vs_error(-ENOENT, "VM '%s' has no snapshot '%s'", vm, snap);
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    return err;
}

int mgmt_store_snapshot_delete(struct mgmt_store *s, const char *vm, const char *snap)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s, "DELETE FROM snapshots WHERE vm = ?1 AND name = ?2", &st))) {
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, snap, -1, SQLITE_STATIC);
        err = store_step_done(s, st, "snapshot delete");
        if (err == 0)
            err = vs_error(-ENOENT, "VM '%s' has no snapshot '%s'", vm, snap);
    }
    if (err >= 0)
        err = store_event_locked(s, vm, "snapshot-deleted", snap);
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_snapshot_list(struct mgmt_store *s, const char *vm, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int err = store_prepare(
        s, "SELECT name FROM snapshots WHERE vm = ?1 ORDER BY created_at, rowid", &st);
    char **list = NULL;
    size_t n = 0;
    if (!err) {
        sqlite3_bind_text(st, 1, vm, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW) {
            char **bigger = realloc(list, (n + 1) * sizeof(*list));
            if (!bigger) {
                err = -ENOMEM;
                break;
            }
            list = bigger;
            list[n++] = vs_strdup((const char *)sqlite3_column_text(st, 0));
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    *names = list;
    *count = n;
    return err;
}

int mgmt_store_check(struct mgmt_store *s)
{
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int err = store_prepare(s, "PRAGMA integrity_check", &st);
    if (!err) {
        if (sqlite3_step(st) != SQLITE_ROW)
            err = store_sql_error(s, SQLITE_ERROR, "integrity check");
        else if (strcmp((const char *)sqlite3_column_text(st, 0), "ok"))
            err = vs_error(-EIO, "store: integrity check: %s",
                           (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    return err;
}

void mgmt_store_set_notify(struct mgmt_store *s, mgmt_event_notify_fn fn, void *arg)
{
    pthread_mutex_lock(&s->lock);
    s->notify = fn;
    s->notify_arg = arg;
    pthread_mutex_unlock(&s->lock);
}

int mgmt_store_events_since(struct mgmt_store *s, int64_t after, size_t max,
                            struct mgmt_event **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    struct mgmt_event *list = max ? vs_calloc(max, sizeof(*list)) : NULL;
    if (max && !list)
        return -ENOMEM;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int err = store_prepare(s,
                            "SELECT id, time, vm, event, detail FROM events WHERE id > ?1"
                            " ORDER BY id LIMIT ?2",
                            &st);
    size_t n = 0;
    if (!err) {
        sqlite3_bind_int64(st, 1, after);
        sqlite3_bind_int64(st, 2, (int64_t)max);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
            struct mgmt_event *ev = &list[n++];
            ev->id = sqlite3_column_int64(st, 0);
            ev->time = sqlite3_column_int64(st, 1);
            const char *t;
            snprintf(ev->vm, sizeof(ev->vm), "%s",
                     (t = (const char *)sqlite3_column_text(st, 2)) ? t : "");
            snprintf(ev->event, sizeof(ev->event), "%s",
                     (t = (const char *)sqlite3_column_text(st, 3)) ? t : "");
            snprintf(ev->detail, sizeof(ev->detail), "%s",
                     (t = (const char *)sqlite3_column_text(st, 4)) ? t : "");
        }
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            err = store_sql_error(s, rc, "events");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    if (err) {
        free(list);
        return err;
    }
    *out = list;
    *count = n;
    return 0;
}

int64_t mgmt_store_last_event_id(struct mgmt_store *s)
{
    int64_t id = 0;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    if (store_prepare(s, "SELECT COALESCE(MAX(id), 0) FROM events", &st) == 0) {
        if (sqlite3_step(st) == SQLITE_ROW)
            id = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    return id;
}

int mgmt_store_pool_define(struct mgmt_store *s, const char *name, const char *path)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err =
              store_prepare(s, "SELECT name, path FROM pools WHERE name = ?1 OR path = ?2", &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            const char *other = (const char *)sqlite3_column_text(st, 0);
            if (!strcmp(other, name))
                err = vs_error(-EEXIST, "pool '%s' is already defined (path %s)", name,
                               (const char *)sqlite3_column_text(st, 1));
            else
                err = vs_error(-EEXIST, "%s is already the directory of pool '%s'", path, other);
        }
        sqlite3_finalize(st);
    }
    if (!err && !(err = store_prepare(s,
                                      "INSERT INTO pools (name, path, created_at)"
                                      " VALUES (?1, ?2, ?3)",
                                      &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (int64_t)time(NULL));
        err = store_step_done(s, st, "pool define");
    }
    if (err >= 0)
        err = store_event_locked(s, "", "pool-defined", name);
    return store_end(s, err < 0 ? err : 0);
}

int mgmt_store_pool_undefine(struct mgmt_store *s, const char *name)
{
    int err = store_begin(s);
    if (err)
        return err;
    sqlite3_stmt *st;
    if (!(err = store_prepare(s, "DELETE FROM pools WHERE name = ?1", &st))) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        err = store_step_done(s, st, "pool undefine");
        if (err == 0)
            err = vs_error(-ENOENT, "no pool named '%s'", name);
    }
    if (err >= 0)
        err = store_event_locked(s, "", "pool-undefined", name);
    return store_end(s, err < 0 ? err : 0);
}

static int pool_from_row(sqlite3_stmt *st, void *out)
{
    struct mgmt_pool_record *p = out;
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(p->path, sizeof(p->path), "%s", (const char *)sqlite3_column_text(st, 1));
    p->created_at = sqlite3_column_int64(st, 2);
    return 0;
}

int mgmt_store_pool_get(struct mgmt_store *s, const char *name, struct mgmt_pool_record *out)
{
    int err = store_get_row(s, "SELECT name, path, created_at FROM pools WHERE name = ?1", name,
                            "pool get", pool_from_row, out);
    return err == 1 ? vs_error(-ENOENT, "no pool named '%s'", name) : err;
}

int mgmt_store_pool_list(struct mgmt_store *s, struct mgmt_pool_record **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    void *rows;
    size_t n;
    int err = store_list_rows(s, "SELECT name, path, created_at FROM pools ORDER BY name",
                              "pool list", sizeof(**out), pool_from_row, &rows, &n);
    struct mgmt_pool_record *list = rows;
    if (err) {
        free(list);
        return err;
    }
    *out = list;
    *count = n;
    return 0;
}

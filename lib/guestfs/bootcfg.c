/*
 * lib/guestfs/bootcfg.c — boot menus as a boot loader would read them: grub2 grub.cfg,
 * grub-legacy menu.lst, extlinux/syslinux configs. This is vessel's pygrub.
 *
 * The idea for grub.cfg: don't pattern-match lines, run the script the way grub's shell would —
 * words with grub's quoting and $variable expansion, `set`/assignments, `search --set`, menuentry
 * and submenu blocks with a variable scope each, `load_env` from grubenv — but without evaluating
 * conditions: both branches of an `if` run, and the last `set` wins, which is what generated
 * configs rely on. So `set root='(hd0,msdos1)'` is just a variable holding a device name, and the
 * device name parser (not a split on ',') turns msdos1/gpt2/1 into partition numbers.
 * Every limit (entries, nesting, words, variable length) is fixed so hostile input stays cheap,
 * and every syntax error names the file and line.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vessel/guestfs.h"
#include "vessel/util.h"

#define MAX_ENTRIES 4096
#define MAX_DEPTH   32
#define MAX_WORDS   1024
#define MAX_VARS    1024
#define MAX_VALUE   (64 * 1024)

const char *guestfs_boot_kind_name(enum guestfs_boot_kind kind)
{
    switch (kind) {
    case GUESTFS_BOOT_GRUB2:
        return "grub2";
    case GUESTFS_BOOT_GRUB_LEGACY:
        return "grub-legacy";
    default:
        return "extlinux";
    }
}

/* ---- small helpers ---- */

struct sbuf {
    char *p;
    size_t n, cap;
    bool overflow;
};

static bool sb_add(struct sbuf *b, const char *s, size_t len)
{
    if (b->n + len + 1 > MAX_VALUE) {
        b->overflow = true;
        return false;
    }
    if (b->n + len + 1 > b->cap) {
        size_t cap = VS_MAX(b->cap * 2, b->n + len + 64);
        char *np = realloc(b->p, cap);
        if (!np) {
            b->overflow = true;
            return false;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
    return true;
}

static char *sb_take(struct sbuf *b)
{
    if (!b->p)
        return strdup("");
    char *p = b->p;
    b->p = NULL;
    b->n = b->cap = 0;
    return p;
}

static void entry_free(struct guestfs_boot_entry *e)
{
    free(e->title);
    free(e->id);
    free(e->kernel);
    free(e->initrd);
    free(e->cmdline);
    free(e->root_uuid);
    free(e->root_label);
    free(e->position);
}

void guestfs_bootcfg_free(struct guestfs_bootcfg *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->count; i++)
        entry_free(&cfg->entries[i]);
    free(cfg->entries);
    free(cfg->default_spec);
    free(cfg);
}

static struct guestfs_boot_entry *cfg_add(struct guestfs_bootcfg *cfg)
{
    if (cfg->count >= MAX_ENTRIES)
        return NULL;
    struct guestfs_boot_entry *n = realloc(cfg->entries, (cfg->count + 1) * sizeof(*n));
    if (!n)
        return NULL;
    cfg->entries = n;
    struct guestfs_boot_entry *e = &cfg->entries[cfg->count++];
    memset(e, 0, sizeof(*e));
    e->part = -1;
    return e;
}

/* "(hd0,msdos1)", "hd0,gpt2", "(hd0,1)", "(hd0)" → partition number (grub2: 1-based, legacy:
 * 0-based); -1 when it names no partition of the first disk we can tell. -2 when malformed. */
static int parse_device(const char *s, size_t len, bool legacy)
{
    if (len && s[0] == '(') {
        s++;
        len--;
    }
    if (len && s[len - 1] == ')')
        len--;
    if (len < 2 || (strncmp(s, "hd", 2) != 0 && strncmp(s, "sd", 2) != 0))
        return -1; /* (lvm/…), (md/0), (cd) … */
    const char *comma = memchr(s, ',', len);
    if (!comma)
        return 0;
    const char *p = comma + 1, *end = s + len;
    while (p < end && isalpha((unsigned char)*p))
        p++;
    if (p == end || !isdigit((unsigned char)*p))
        return -2;
    long n = 0;
    while (p < end && isdigit((unsigned char)*p)) {
        n = n * 10 + (*p - '0');
        if (n > 100000)
            return -2;
        p++;
    }
    if (p < end && *p != ',') /* (hd0,msdos5,bsd1) nests; keep the first level */
        return -2;
    return legacy ? (int)n + 1 : (int)n;
}

/* Split "(dev)/path" into a device partition (or -1 if absent) and the path. */
static int split_device_path(const char *s, bool legacy, int *part, const char **path)
{
    *part = -3; /* no device prefix */
    *path = s;
    if (s[0] != '(')
        return 0;
    const char *close = strchr(s, ')');
    if (!close)
        return -1;
    int p = parse_device(s, (size_t)(close - s + 1), legacy);
    if (p == -2)
        return -1;
    *part = p;
    *path = close + 1;
    return 0;
}

/* ---- grub2: variables ---- */

struct var {
    char *name;
    char *value;
};

struct vars {
    struct var *v;
    size_t n;
};

static const char *var_get(const struct vars *vs, const char *name, size_t len)
{
    for (size_t i = vs->n; i-- > 0;)
        if (strlen(vs->v[i].name) == len && !memcmp(vs->v[i].name, name, len))
            return vs->v[i].value;
    return NULL;
}

static int var_set(struct vars *vs, const char *name, const char *value)
{
    for (size_t i = 0; i < vs->n; i++)
        if (!strcmp(vs->v[i].name, name)) {
            char *nv = strdup(value);
            if (!nv)
                return -ENOMEM;
            free(vs->v[i].value);
            vs->v[i].value = nv;
            return 0;
        }
    if (vs->n >= MAX_VARS)
        return -E2BIG;
    struct var *nv = realloc(vs->v, (vs->n + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    vs->v = nv;
    vs->v[vs->n].name = strdup(name);
    vs->v[vs->n].value = strdup(value);
    if (!vs->v[vs->n].name || !vs->v[vs->n].value) {
        free(vs->v[vs->n].name);
        free(vs->v[vs->n].value);
        return -ENOMEM;
    }
    vs->n++;
    return 0;
}

static void vars_free(struct vars *vs)
{
    for (size_t i = 0; i < vs->n; i++) {
        free(vs->v[i].name);
        free(vs->v[i].value);
    }
    free(vs->v);
    vs->v = NULL;
    vs->n = 0;
}

static int vars_copy(struct vars *dst, const struct vars *src)
{
    memset(dst, 0, sizeof(*dst));
    for (size_t i = 0; i < src->n; i++)
        if (var_set(dst, src->v[i].name, src->v[i].value) < 0) {
            vars_free(dst);
            return -ENOMEM;
        }
    return 0;
}

/* ---- grub2: the lexer ---- */

struct word {
    char *s;
    bool quoted; /* any part was quoted: "{" is then not a brace */
};

struct grub {
    const char *text;
    size_t len, pos;
    unsigned line;
    const char *file;
    struct vars vars;
    struct guestfs_bootcfg *cfg;
    const char *grubenv;
    size_t grubenv_len;
    struct word words[MAX_WORDS];
    size_t nwords;
    unsigned stmt_line;
    bool pending; /* words[] already holds the next statement (after a same-line '{') */
};

static void words_clear(struct grub *g)
{
    for (size_t i = 0; i < g->nwords; i++)
        free(g->words[i].s);
    g->nwords = 0;
}

static bool is_name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Expand $name / ${name} at g->pos (just after '$') into B. */
static void expand_var(struct grub *g, struct sbuf *b)
{
    const char *t = g->text;
    size_t start, end;
    if (g->pos < g->len && t[g->pos] == '{') {
        start = g->pos + 1;
        end = start;
        while (end < g->len && t[end] != '}' && t[end] != '\n')
            end++;
        g->pos = end < g->len && t[end] == '}' ? end + 1 : end;
    } else {
        start = g->pos;
        end = start;
        if (end < g->len &&
            (isdigit((unsigned char)t[end]) || t[end] == '?' || t[end] == '@' || t[end] == '#'))
            end++;
        else
            while (end < g->len && is_name_char(t[end]))
                end++;
        g->pos = end;
        if (end == start) {
            sb_add(b, "$", 1);
            return;
        }
    }
    const char *v = var_get(&g->vars, t + start, end - start);
    if (v)
        sb_add(b, v, strlen(v));
}

/* Read one statement's words (up to newline or ';'). 1 = got a statement (maybe empty),
 * 0 = end of text, <0 error. */
static int next_statement(struct grub *g)
{
    if (g->pending) {
        g->pending = false;
        return 1;
    }
    words_clear(g);
    const char *t = g->text;
    /* skip blanks and comments */
    for (;;) {
        while (g->pos < g->len && (t[g->pos] == ' ' || t[g->pos] == '\t' || t[g->pos] == '\r'))
            g->pos++;
        if (g->pos < g->len && t[g->pos] == '\\' && g->pos + 1 < g->len && t[g->pos + 1] == '\n') {
            g->pos += 2;
            g->line++;
            continue;
        }
        break;
    }
    if (g->pos >= g->len)
        return 0;
    g->stmt_line = g->line;
    for (;;) {
        while (g->pos < g->len && (t[g->pos] == ' ' || t[g->pos] == '\t' || t[g->pos] == '\r'))
            g->pos++;
        if (g->pos >= g->len)
            return 1;
        char c = t[g->pos];
        if (c == '\n') {
            g->pos++;
            g->line++;
            return 1;
        }
        if (c == ';') {
            g->pos++;
            return 1;
        }
        if (c == '#') {
            while (g->pos < g->len && t[g->pos] != '\n')
                g->pos++;
            continue;
        }
        if (c == '\\' && g->pos + 1 < g->len && t[g->pos + 1] == '\n') {
            g->pos += 2;
            g->line++;
            continue;
        }
        /* a word */
        struct sbuf b = {0};
        bool quoted = false;
        while (g->pos < g->len) {
            c = t[g->pos];
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';')
                break;
            if (c == '\'') {
                unsigned qline = g->line;
                size_t s = ++g->pos;
                while (g->pos < g->len && t[g->pos] != '\'') {
                    if (t[g->pos] == '\n')
                        g->line++;
                    g->pos++;
                }
                if (g->pos >= g->len) {
                    free(b.p);
                    return vs_error(-EINVAL, "%s line %u: unterminated ' quote", g->file, qline);
                }
                sb_add(&b, t + s, g->pos - s);
                g->pos++;
                quoted = true;
            } else if (c == '"') {
                unsigned qline = g->line;
                g->pos++;
                while (g->pos < g->len && t[g->pos] != '"') {
                    char d = t[g->pos];
                    if (d == '\\' && g->pos + 1 < g->len && strchr("\"$\\\n", t[g->pos + 1])) {
                        if (t[g->pos + 1] == '\n')
                            g->line++;
                        else
                            sb_add(&b, &t[g->pos + 1], 1);
                        g->pos += 2;
                    } else if (d == '$') {
                        g->pos++;
                        expand_var(g, &b);
                    } else {
                        if (d == '\n')
                            g->line++;
                        sb_add(&b, &d, 1);
                        g->pos++;
                    }
                }
                if (g->pos >= g->len) {
                    free(b.p);
                    return vs_error(-EINVAL, "%s line %u: unterminated \" quote", g->file, qline);
                }
                g->pos++;
                quoted = true;
            } else if (c == '\\' && g->pos + 1 < g->len) {
                if (t[g->pos + 1] == '\n')
                    g->line++;
                else
                    sb_add(&b, &t[g->pos + 1], 1);
                g->pos += 2;
            } else if (c == '$') {
                g->pos++;
                expand_var(g, &b);
            } else {
                sb_add(&b, &c, 1);
                g->pos++;
            }
        }
        if (b.overflow) {
            free(b.p);
            return vs_error(-E2BIG, "%s line %u: word longer than %d bytes", g->file, g->line,
                            MAX_VALUE);
        }
        if (!quoted && !b.p)
            continue; /* an unquoted variable that expanded to nothing is no word */
        if (g->nwords >= MAX_WORDS) {
            free(b.p);
            return vs_error(-E2BIG, "%s line %u: more than %d words", g->file, g->line, MAX_WORDS);
        }
        g->words[g->nwords].s = sb_take(&b);
        g->words[g->nwords].quoted = quoted;
        if (!g->words[g->nwords].s)
            return vs_error(-ENOMEM, "out of memory");
        g->nwords++;
    }
}

static bool word_is(const struct grub *g, size_t i, const char *s)
{
    return i < g->nwords && !g->words[i].quoted && !strcmp(g->words[i].s, s);
}

/* ---- grub2: statements ---- */

struct scope {
    struct guestfs_boot_entry *entry; /* inside a menuentry */
    char *title_prefix;               /* "Sub>" for submenu children */
    char *position_prefix;            /* "1>" */
    size_t *counter;                  /* next index at this level */
    bool skip;                        /* function bodies: parse, don't run */
};

static int grub_block(struct grub *g, struct scope *sc, unsigned depth, unsigned open_line);

static char *join_words(const struct grub *g, size_t from)
{
    struct sbuf b = {0};
    for (size_t i = from; i < g->nwords; i++) {
        if (i > from)
            sb_add(&b, " ", 1);
        sb_add(&b, g->words[i].s, strlen(g->words[i].s));
    }
    if (b.overflow) {
        free(b.p);
        return NULL;
    }
    return sb_take(&b);
}

static void load_grubenv(struct grub *g)
{
    const char *t = g->grubenv;
    size_t len = g->grubenv_len, i = 0;
    while (t && i < len) {
        size_t e = i;
        while (e < len && t[e] != '\n')
            e++;
        if (t[i] != '#') {
            const char *eq = memchr(t + i, '=', e - i);
            if (eq && eq > t + i) {
                char *name = strndup(t + i, (size_t)(eq - (t + i)));
                char *value = strndup(eq + 1, (size_t)(t + e - eq - 1));
                if (name && value)
                    var_set(&g->vars, name, value);
                free(name);
                free(value);
            }
        }
        i = e + 1;
    }
}

/* The root variable, as a partition number / uuid / label, into entry E. */
static void entry_take_root(struct grub *g, struct guestfs_boot_entry *e)
{
    const char *root = var_get(&g->vars, "root", 4);
    if (!root)
        return;
    free(e->root_uuid);
    free(e->root_label);
    e->root_uuid = e->root_label = NULL;
    if (!strncmp(root, "\x01uuid:", 6)) {
        e->root_uuid = strdup(root + 6);
    } else if (!strncmp(root, "\x01label:", 7)) {
        e->root_label = strdup(root + 7);
    } else {
        int p = parse_device(root, strlen(root), false);
        e->part = p >= 0 ? p : -1;
    }
}

static int grub_search(struct grub *g)
{
    const char *var = "root", *kind = "file", *key = NULL;
    for (size_t i = 1; i < g->nwords; i++) {
        const char *w = g->words[i].s;
        if (!strncmp(w, "--set=", 6))
            var = w + 6;
        else if (!strcmp(w, "--set") || !strcmp(w, "-s")) {
            if (i + 1 < g->nwords && g->words[i + 1].s[0] != '-')
                var = g->words[++i].s;
        } else if (!strcmp(w, "--fs-uuid") || !strcmp(w, "-u"))
            kind = "uuid";
        else if (!strcmp(w, "--label") || !strcmp(w, "-l"))
            kind = "label";
        else if (!strcmp(w, "--file") || !strcmp(w, "-f"))
            kind = "file";
        else if (!strncmp(w, "--hint", 6)) {
            if (!strchr(w, '=') && i + 1 < g->nwords)
                i++;
        } else if (w[0] != '-')
            key = w;
    }
    if (!key)
        return vs_error(-EINVAL, "%s line %u: search without a key", g->file, g->stmt_line);
    if (!strcmp(kind, "file"))
        return 0; /* can't tell which partition holds a file here; keep the current root */
    char *value = vs_asprintf("\x01%s:%s", kind, key);
    if (!value)
        return -ENOMEM;
    int rc = var_set(&g->vars, var, value);
    free(value);
    return rc;
}

static int grub_assign(struct grub *g, const char *w)
{
    const char *eq = strchr(w, '=');
    if (!eq || eq == w)
        return 0;
    for (const char *p = w; p < eq; p++)
        if (!is_name_char(*p))
            return 0;
    char *name = strndup(w, (size_t)(eq - w));
    if (!name)
        return -ENOMEM;
    int rc = 0;
    /* an empty default never hides an earlier one (both if-branches run here) */
    const char *value = eq + 1;
    size_t vlen = strlen(value);
    char *stripped = NULL;
    /* grub keeps root without its parentheses, so "($root)/vmlinuz" works */
    if (!strcmp(name, "root") && vlen >= 2 && value[0] == '(' && value[vlen - 1] == ')') {
        stripped = strndup(value + 1, vlen - 2);
        if (!stripped) {
            free(name);
            return -ENOMEM;
        }
        value = stripped;
    }
    if (!(strcmp(name, "default") == 0 && *value == 0))
        rc = var_set(&g->vars, name, value);
    free(stripped);
    free(name);
    if (rc == -E2BIG)
        return vs_error(rc, "%s line %u: too many variables", g->file, g->stmt_line);
    return rc;
}

/* Make REST (then freed) the next statement next_statement returns. */
static void take_pending(struct grub *g, struct word *rest, size_t nrest)
{
    if (nrest) {
        memcpy(g->words, rest, nrest * sizeof(rest[0]));
        g->nwords = nrest;
        g->pending = true;
    }
    free(rest);
}

static int grub_menu(struct grub *g, struct scope *sc, unsigned depth, bool submenu)
{
    unsigned line = g->stmt_line;
    size_t brace = 1;
    while (brace < g->nwords && !word_is(g, brace, "{"))
        brace++;
    if (brace == g->nwords)
        return vs_error(-EINVAL, "%s line %u: %s without '{'", g->file, line, g->words[0].s);
    /* words after '{' on the same line are the block's first statement */
    size_t nrest = g->nwords - brace - 1;
    struct word *rest = calloc(nrest + 1, sizeof(*rest));
    if (!rest)
        return vs_error(-ENOMEM, "out of memory");
    memcpy(rest, g->words + brace + 1, nrest * sizeof(rest[0]));
    g->nwords = brace + 1;
    const char *title = NULL, *id = NULL;
    for (size_t i = 1; i + 1 < g->nwords; i++) {
        const char *w = g->words[i].s;
        if (!g->words[i].quoted && (!strcmp(w, "--class") || !strcmp(w, "--users") ||
                                    !strcmp(w, "--hotkey") || !strcmp(w, "--id"))) {
            if (i + 2 < g->nwords && !strcmp(w, "--id"))
                id = g->words[i + 1].s;
            i++;
        } else if (!g->words[i].quoted && !strncmp(w, "--", 2)) {
            continue;
        } else if (!title) {
            title = w;
        } else if (!id && i == g->nwords - 2) {
            id = w; /* `menuentry 'T' $menuentry_id_option 'id' {` with the option empty */
        }
    }
    if (!title) {
        for (size_t i = 0; i < nrest; i++)
            free(rest[i].s);
        free(rest);
        return vs_error(-EINVAL, "%s line %u: %s without a title", g->file, line, g->words[0].s);
    }
    if (sc->skip) {
        struct scope inner = {.skip = true};
        words_clear(g);
        take_pending(g, rest, nrest);
        return grub_block(g, &inner, depth + 1, line);
    }
    size_t index = (*sc->counter)++;
    char *full_title = vs_asprintf("%s%s", sc->title_prefix ? sc->title_prefix : "", title);
    char *position = vs_asprintf("%s%zu", sc->position_prefix ? sc->position_prefix : "", index);
    char *id_copy = id ? strdup(id) : NULL;
    words_clear(g);
    take_pending(g, rest, nrest);
    if (!full_title || !position || (id && !id_copy)) {
        free(full_title);
        free(position);
        free(id_copy);
        return vs_error(-ENOMEM, "out of memory");
    }
    struct vars saved;
    int rc = vars_copy(&saved, &g->vars);
    if (rc < 0) {
        free(full_title);
        free(position);
        free(id_copy);
        return vs_error(rc, "out of memory");
    }
    if (submenu) {
        size_t counter = 0;
        char *tp = vs_asprintf("%s>", full_title);
        char *pp = vs_asprintf("%s>", position);
        struct scope inner = {.title_prefix = tp, .position_prefix = pp, .counter = &counter};
        rc = tp && pp ? grub_block(g, &inner, depth + 1, line) : -ENOMEM;
        free(tp);
        free(pp);
        free(full_title);
        free(position);
        free(id_copy);
    } else {
        struct guestfs_boot_entry *e = cfg_add(g->cfg);
        if (!e) {
            free(full_title);
            free(position);
            free(id_copy);
            vars_free(&saved);
            return vs_error(-E2BIG, "%s line %u: more than %d entries", g->file, line, MAX_ENTRIES);
        }
        e->title = full_title;
        e->position = position;
        e->id = id_copy;
        e->line = line;
        size_t entry_index = g->cfg->count - 1;
        entry_take_root(g, e);
        struct scope inner = {.entry = NULL, .counter = sc->counter};
        /* entries may move when the array grows: address it by index */
        inner.entry = (struct guestfs_boot_entry *)(uintptr_t)(entry_index + 1);
        rc = grub_block(g, &inner, depth + 1, line);
    }
    vars_free(&g->vars);
    g->vars = saved;
    return rc;
}

static struct guestfs_boot_entry *scope_entry(struct grub *g, struct scope *sc)
{
    if (!sc->entry)
        return NULL;
    return &g->cfg->entries[(uintptr_t)sc->entry - 1];
}

static int grub_command(struct grub *g, struct scope *sc, unsigned depth)
{
    size_t first = 0;
    while (first < g->nwords &&
           (word_is(g, first, "then") || word_is(g, first, "else") || word_is(g, first, "do")))
        first++;
    if (first == g->nwords)
        return 0;
    if (first) { /* drop the keywords */
        for (size_t i = 0; i < first; i++)
            free(g->words[i].s);
        memmove(g->words, g->words + first, (g->nwords - first) * sizeof(g->words[0]));
        g->nwords -= first;
    }
    const char *cmd = g->words[0].s;
    if (word_is(g, 0, "if") || word_is(g, 0, "elif") || word_is(g, 0, "while") ||
        word_is(g, 0, "until") || word_is(g, 0, "for") || word_is(g, 0, "fi") ||
        word_is(g, 0, "done"))
        return 0;
    if (word_is(g, 0, "menuentry"))
        return grub_menu(g, sc, depth, false);
    if (word_is(g, 0, "submenu"))
        return grub_menu(g, sc, depth, true);
    if (word_is(g, 0, "function")) {
        unsigned line = g->stmt_line;
        if (!word_is(g, g->nwords - 1, "{") || g->nwords < 3)
            return vs_error(-EINVAL, "%s line %u: function without '{'", g->file, line);
        struct scope inner = {.skip = true};
        words_clear(g);
        return grub_block(g, &inner, depth + 1, line);
    }
    if (sc->skip)
        return 0;
    struct guestfs_boot_entry *e = scope_entry(g, sc);
    if (!strcmp(cmd, "set")) {
        if (g->nwords < 2)
            return 0;
        if (!strchr(g->words[1].s, '='))
            return 0;
        return grub_assign(g, g->words[1].s);
    }
    if (!strcmp(cmd, "load_env")) {
        load_grubenv(g);
        return 0;
    }
    if (!strcmp(cmd, "search"))
        return grub_search(g);
    if (e && (!strcmp(cmd, "linux") || !strcmp(cmd, "linux16") || !strcmp(cmd, "linuxefi") ||
              !strcmp(cmd, "kernel"))) {
        if (g->nwords < 2)
            return vs_error(-EINVAL, "%s line %u: %s without a kernel path", g->file, g->stmt_line,
                            cmd);
        int part;
        const char *path;
        if (split_device_path(g->words[1].s, false, &part, &path) < 0)
            return vs_error(-EINVAL, "%s line %u: bad device in '%s'", g->file, g->stmt_line,
                            g->words[1].s);
        entry_take_root(g, e);
        if (part != -3) {
            e->part = part;
            free(e->root_uuid);
            free(e->root_label);
            e->root_uuid = e->root_label = NULL;
        }
        free(e->kernel);
        free(e->cmdline);
        e->kernel = strdup(*path ? path : "/");
        e->cmdline = join_words(g, 2);
        if (!e->kernel || !e->cmdline)
            return vs_error(-ENOMEM, "out of memory");
        return 0;
    }
    if (e && (!strcmp(cmd, "initrd") || !strcmp(cmd, "initrd16") || !strcmp(cmd, "initrdefi"))) {
        if (g->nwords < 2)
            return vs_error(-EINVAL, "%s line %u: %s without a path", g->file, g->stmt_line, cmd);
        for (size_t i = 1; i < g->nwords; i++) {
            int part;
            const char *path;
            if (split_device_path(g->words[i].s, false, &part, &path) < 0)
                return vs_error(-EINVAL, "%s line %u: bad device in '%s'", g->file, g->stmt_line,
                                g->words[i].s);
            /* keep only the path: the device is the kernel's */
            memmove(g->words[i].s, path, strlen(path) + 1);
        }
        free(e->initrd);
        e->initrd = join_words(g, 1);
        return e->initrd ? 0 : vs_error(-ENOMEM, "out of memory");
    }
    if (g->nwords == 1 && strchr(cmd, '='))
        return grub_assign(g, cmd);
    return 0;
}

static int grub_block(struct grub *g, struct scope *sc, unsigned depth, unsigned open_line)
{
    if (depth > MAX_DEPTH)
        return vs_error(-EINVAL, "%s line %u: blocks nested deeper than %d", g->file, open_line,
                        MAX_DEPTH);
    for (;;) {
        int rc = next_statement(g);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (depth > 0)
                return vs_error(-EINVAL, "%s line %u: block opened here is never closed by '}'",
                                g->file, open_line);
            return 0;
        }
        if (g->nwords == 0)
            continue;
        /* '}' closes the block; words before it on the same line are a command */
        bool closes = word_is(g, g->nwords - 1, "}");
        for (size_t i = 0; closes && i < g->nwords; i++)
            if (word_is(g, i, "{"))
                closes = false; /* `menuentry x { linux /k }`: the opener handles its '}' */
        if (closes) {
            free(g->words[g->nwords - 1].s);
            g->nwords--;
        }
        if (g->nwords) {
            rc = grub_command(g, sc, depth);
            if (rc < 0)
                return rc;
        }
        if (closes) {
            if (depth == 0)
                return vs_error(-EINVAL, "%s line %u: '}' without an open block", g->file,
                                g->stmt_line);
            return 0;
        }
    }
}

static int grub2_parse(struct guestfs_bootcfg *cfg, const char *text, size_t len, const char *file,
                       const char *env, size_t env_len)
{
    struct grub *g = calloc(1, sizeof(*g));
    if (!g)
        return vs_error(-ENOMEM, "out of memory");
    g->text = text;
    g->len = len;
    g->line = 1;
    g->file = file;
    g->cfg = cfg;
    g->grubenv = env;
    g->grubenv_len = env_len;
    size_t counter = 0;
    struct scope top = {.counter = &counter};
    int rc = grub_block(g, &top, 0, 1);
    if (rc == 0) {
        const char *d = var_get(&g->vars, "default", 7);
        if (d && *d && strcmp(d, "saved") != 0)
            cfg->default_spec = strdup(d);
        else if (d && !strcmp(d, "saved")) {
            const char *s = var_get(&g->vars, "saved_entry", 11);
            if (s && *s)
                cfg->default_spec = strdup(s);
        }
        const char *t = var_get(&g->vars, "timeout", 7);
        cfg->timeout = t && isdigit((unsigned char)*t) ? atoi(t) : -1;
    }
    words_clear(g);
    vars_free(&g->vars);
    free(g);
    return rc;
}

/* ---- line-based formats ---- */

struct lines {
    const char *text;
    size_t len, pos;
    unsigned line;
    char *buf; /* the current line, NUL-terminated, trimmed */
};

static bool next_line(struct lines *l)
{
    if (l->pos >= l->len)
        return false;
    size_t e = l->pos;
    while (e < l->len && l->text[e] != '\n')
        e++;
    size_t s = l->pos;
    l->pos = e + 1;
    l->line++;
    while (s < e && isspace((unsigned char)l->text[s]))
        s++;
    while (e > s && isspace((unsigned char)l->text[e - 1]))
        e--;
    free(l->buf);
    l->buf = strndup(l->text + s, e - s);
    if (l->buf)
        for (char *p = l->buf; *p; p++)
            if (*p == '\t' || *p == 0)
                *p = ' ';
    return l->buf != NULL;
}

/* Split "key rest" or "key=rest" at the first space or '='. */
static void split_key(char *line, char **key, char **rest, bool allow_eq)
{
    char *p = line;
    while (*p && *p != ' ' && !(allow_eq && *p == '='))
        p++;
    *key = line;
    if (*p) {
        *p++ = 0;
        while (*p == ' ' || (allow_eq && *p == '='))
            p++;
    }
    *rest = p;
}

static int legacy_parse(struct guestfs_bootcfg *cfg, const char *text, size_t len, const char *file)
{
    struct lines l = {.text = text, .len = len};
    struct guestfs_boot_entry *e = NULL;
    int global_root = -1;
    int rc = 0;
    cfg->timeout = -1;
    while (rc == 0 && next_line(&l)) {
        if (!l.buf[0] || l.buf[0] == '#')
            continue;
        char *key, *rest;
        split_key(l.buf, &key, &rest, true);
        if (!strcmp(key, "title")) {
            e = cfg_add(cfg);
            if (!e) {
                rc = vs_error(-E2BIG, "%s line %u: too many entries", file, l.line);
                break;
            }
            e->title = strdup(rest);
            e->position = vs_asprintf("%zu", cfg->count - 1);
            e->line = l.line;
            e->part = global_root;
            e->cmdline = strdup("");
        } else if (!strcmp(key, "default")) {
            if (strcmp(rest, "saved") != 0) {
                char *end;
                long v = strtol(rest, &end, 10);
                if (!*rest || *end || v < 0)
                    rc = vs_error(-EINVAL, "%s line %u: default '%s' is not a number", file, l.line,
                                  rest);
                else {
                    free(cfg->default_spec);
                    cfg->default_spec = strdup(rest);
                }
            }
        } else if (!strcmp(key, "timeout")) {
            cfg->timeout = atoi(rest);
        } else if (!strcmp(key, "root") || !strcmp(key, "rootnoverify")) {
            int p = parse_device(rest, strlen(rest), true);
            if (p == -2 || rest[0] != '(')
                rc = vs_error(-EINVAL, "%s line %u: root '%s' is not a device like (hd0,0)", file,
                              l.line, rest);
            else if (e)
                e->part = p;
            else
                global_root = p;
        } else if (!strcmp(key, "kernel")) {
            if (!e) {
                rc = vs_error(-EINVAL, "%s line %u: kernel before any title", file, l.line);
                break;
            }
            char *args = rest;
            while (*args == '-' && args[1] == '-') { /* kernel --type=netbsd … */
                while (*args && *args != ' ')
                    args++;
                while (*args == ' ')
                    args++;
            }
            char *path, *cmd;
            split_key(args, &path, &cmd, false);
            if (!*path) {
                rc = vs_error(-EINVAL, "%s line %u: kernel without a path", file, l.line);
                break;
            }
            int part;
            const char *p;
            if (split_device_path(path, true, &part, &p) < 0) {
                rc = vs_error(-EINVAL, "%s line %u: bad device in '%s'", file, l.line, path);
                break;
            }
            if (part != -3)
                e->part = part;
            free(e->kernel);
            free(e->cmdline);
            e->kernel = strdup(*p ? p : "/");
            e->cmdline = strdup(cmd);
        } else if (!strcmp(key, "initrd")) {
            if (!e) {
                rc = vs_error(-EINVAL, "%s line %u: initrd before any title", file, l.line);
                break;
            }
            int part;
            const char *p;
            if (!*rest || split_device_path(rest, true, &part, &p) < 0) {
                rc = vs_error(-EINVAL, "%s line %u: bad initrd '%s'", file, l.line, rest);
                break;
            }
            free(e->initrd);
            e->initrd = strdup(p);
        }
    }
    free(l.buf);
    return rc;
}

static int extlinux_parse(struct guestfs_bootcfg *cfg, const char *text, size_t len,
                          const char *file)
{
    struct lines l = {.text = text, .len = len};
    struct guestfs_boot_entry *e = NULL;
    int rc = 0;
    cfg->timeout = -1;
    while (rc == 0 && next_line(&l)) {
        if (!l.buf[0] || l.buf[0] == '#')
            continue;
        char *key, *rest;
        split_key(l.buf, &key, &rest, false);
        if (!strcasecmp(key, "menu")) {
            char *sub, *arg;
            split_key(rest, &sub, &arg, false);
            if (!strcasecmp(sub, "label") && e) {
                free(e->title);
                e->title = strdup(arg);
            } else if (!strcasecmp(sub, "default") && e && e->id) {
                free(cfg->default_spec);
                cfg->default_spec = strdup(e->id);
            }
            continue;
        }
        if (!strcasecmp(key, "label")) {
            if (!*rest) {
                rc = vs_error(-EINVAL, "%s line %u: LABEL without a name", file, l.line);
                break;
            }
            e = cfg_add(cfg);
            if (!e) {
                rc = vs_error(-E2BIG, "%s line %u: too many entries", file, l.line);
                break;
            }
            e->id = strdup(rest);
            e->title = strdup(rest);
            e->position = vs_asprintf("%zu", cfg->count - 1);
            e->cmdline = strdup("");
            e->line = l.line;
        } else if (!strcasecmp(key, "default")) {
            if (!*rest) {
                rc = vs_error(-EINVAL, "%s line %u: DEFAULT without a label", file, l.line);
                break;
            }
            free(cfg->default_spec);
            cfg->default_spec = strdup(rest);
        } else if (!strcasecmp(key, "timeout")) {
            cfg->timeout = (atoi(rest) + 9) / 10;
        } else if (!strcasecmp(key, "kernel") || !strcasecmp(key, "linux")) {
            if (!e || !*rest) {
                rc = vs_error(-EINVAL, "%s line %u: %s %s", file, l.line, key,
                              e ? "without a path" : "outside a LABEL");
                break;
            }
            free(e->kernel);
            e->kernel = strdup(rest);
        } else if (!strcasecmp(key, "append")) {
            if (!e)
                continue;
            /* pull initrd= out of the command line, as the loader does */
            struct sbuf b = {0};
            char *save = NULL;
            for (char *tok = strtok_r(rest, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
                if (!strncmp(tok, "initrd=", 7)) {
                    free(e->initrd);
                    e->initrd = strdup(tok + 7);
                    char *comma = strchr(e->initrd ? e->initrd : "", ',');
                    if (comma)
                        *comma = 0; /* several initrds: the first */
                    continue;
                }
                if (b.n)
                    sb_add(&b, " ", 1);
                sb_add(&b, tok, strlen(tok));
            }
            free(e->cmdline);
            e->cmdline = sb_take(&b);
        } else if (!strcasecmp(key, "initrd")) {
            if (!e || !*rest) {
                rc = vs_error(-EINVAL, "%s line %u: INITRD %s", file, l.line,
                              e ? "without a path" : "outside a LABEL");
                break;
            }
            free(e->initrd);
            e->initrd = strdup(rest);
        }
    }
    free(l.buf);
    return rc;
}

int guestfs_bootcfg_parse(enum guestfs_boot_kind kind, const char *text, size_t len,
                          const char *filename, const char *grubenv, size_t grubenv_len,
                          struct guestfs_bootcfg **out)
{
    *out = NULL;
    struct guestfs_bootcfg *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return vs_error(-ENOMEM, "out of memory");
    cfg->kind = kind;
    cfg->timeout = -1;
    int rc;
    if (kind == GUESTFS_BOOT_GRUB2)
        rc = grub2_parse(cfg, text, len, filename, grubenv, grubenv_len);
    else if (kind == GUESTFS_BOOT_GRUB_LEGACY)
        rc = legacy_parse(cfg, text, len, filename);
    else
        rc = extlinux_parse(cfg, text, len, filename);
    if (rc == 0) {
        /* entries without a kernel (chainloaders, memtest via linux16 is fine) stay listed; an
         * entry needs at least its strings for callers */
        for (size_t i = 0; i < cfg->count; i++) {
            struct guestfs_boot_entry *e = &cfg->entries[i];
            if (!e->cmdline)
                e->cmdline = strdup("");
            if (!e->title)
                e->title = strdup("");
            if (!e->position)
                e->position = vs_asprintf("%zu", i);
            if (!e->cmdline || !e->title || !e->position) {
                rc = vs_error(-ENOMEM, "out of memory");
                break;
            }
        }
    }
    if (rc < 0) {
        guestfs_bootcfg_free(cfg);
        return rc;
    }
    *out = cfg;
    return 0;
}

static bool is_position(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s) && *s != '>')
            return false;
    return true;
}

static int find(const struct guestfs_bootcfg *cfg, const char *name, size_t *index)
{
    bool pos = is_position(name);
    for (size_t i = 0; i < cfg->count; i++) {
        const struct guestfs_boot_entry *e = &cfg->entries[i];
        if (pos ? !strcmp(e->position, name)
                : (!strcmp(e->title, name) || (e->id && !strcmp(e->id, name)))) {
            *index = i;
            return 0;
        }
    }
    if (!pos) { /* a leaf title without its submenu path */
        for (size_t i = 0; i < cfg->count; i++) {
            const char *leaf = strrchr(cfg->entries[i].title, '>');
            if (leaf && !strcmp(leaf + 1, name)) {
                *index = i;
                return 0;
            }
        }
    }
    /* grub: a numeric default naming a submenu boots its first entry */
    if (pos) {
        char *prefix = vs_asprintf("%s>", name);
        for (size_t i = 0; prefix && i < cfg->count; i++)
            if (!strncmp(cfg->entries[i].position, prefix, strlen(prefix))) {
                free(prefix);
                *index = i;
                return 0;
            }
        free(prefix);
    }
    return -ENOENT;
}

int guestfs_bootcfg_choose(const struct guestfs_bootcfg *cfg, const char *name, size_t *index)
{
    if (cfg->count == 0)
        return vs_error(-ENOENT, "the boot menu has no entries");
    if (name) {
        if (find(cfg, name, index) == 0)
            return 0;
        return vs_error(-ENOENT, "no boot entry '%s'", name);
    }
    if (cfg->default_spec && find(cfg, cfg->default_spec, index) == 0)
        return 0;
    *index = 0;
    return 0;
}

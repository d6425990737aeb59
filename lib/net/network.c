/*
 * lib/net/network.c — the network store: definitions and runtime state under a state directory,
 * the checks between networks (subnets, DHCP ranges, VNIs, bridges, MACs), and start/stop/
 * attach/detach, which turn a definition into bridges, vxlan ports, taps, nftables tables and a
 * dnsmasq.
 *
 * The idea: the files are the truth and every verb is idempotent against them. NAME.net is the
 * definition; NAME.run/ holds `started`, `taps` (one attached NIC a line: tap, MAC, IP, rate),
 * and the generated nft.conf and dnsmasq.conf. Each change regenerates the network's whole
 * nftables ruleset from that state and loads it in one `nft -f` transaction (the tables are
 * vessel's own: `bridge vessel_NAME`, `ip vessel_NAME`), so rules never drift from the taps.
 * On NAT networks dnsmasq's dhcp-script (`vessel net lease-event`) records each lease in
 * NAME.run/leased and replaces the elements of the table's set `leased` (MAC . IPv4) — only the
 * set, so rules and counters stay — and every regenerated ruleset starts from that file.
 * The store holds an flock on DIR/.lock for its lifetime: one writer at a time (CLI or daemon).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "net/net-internal.h"
#include "vessel/net.h"
#include "vessel/util.h"

struct vs_net_store {
    char *dir;
    int lock_fd;
};

/* ---- small file helpers ---------------------------------------------------------------------- */

static int read_file(const char *path, char **out)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    struct strbuf sb = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        sb_printf(&sb, "%.*s", (int)n, buf);
    fclose(f);
    char *s = sb_finish(&sb);
    if (!s)
        return -ENOMEM;
    *out = s;
    return 0;
}

/* Write via a temporary file and rename, so a crash never leaves half a definition. */
static int write_file(const char *path, const char *text)
{
    char *tmp = vs_asprintf("%s.tmp", path);
    if (!tmp)
        return -ENOMEM;
    FILE *f = fopen(tmp, "we");
    if (!f) {
        int rc = vs_error_errno(-errno, "%s: cannot write", tmp);
        free(tmp);
        return rc;
    }
    bool ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) < 0) {
        int rc = vs_error_errno(-errno ? -errno : -EIO, "%s: cannot write", path);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    return 0;
}

static int mkdir_p(const char *dir)
{
    char *p = vs_strdup(dir);
    if (!p)
        return -ENOMEM;
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) < 0 && errno != EEXIST) {
                int rc = vs_error_errno(-errno, "%s: cannot create", p);
                free(p);
                return rc;
            }
            *s = '/';
        }
    }
    int rc = 0;
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        rc = vs_error_errno(-errno, "%s: cannot create", p);
    free(p);
    return rc;
}

static const char *find_program(const char *name)
{
    static const char *const dirs[] = {"/usr/sbin", "/sbin",           "/usr/bin",
                                       "/bin",      "/usr/local/sbin", "/usr/local/bin"};
    static __thread char path[256];
    for (size_t i = 0; i < VS_ARRAY_SIZE(dirs); i++) {
        snprintf(path, sizeof(path), "%s/%s", dirs[i], name);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

/* Run a program, wait, and keep the first line of what it printed on stderr for the message. */
static int run_program(const char *what, char *const argv[], char *err_line, size_t err_len)
{
    const char *prog = find_program(argv[0]);
    if (err_line && err_len)
        err_line[0] = 0;
    if (!prog)
        return vs_error(-ENOENT, "%s: %s is not installed", what, argv[0]);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return vs_error_errno(-errno, "%s: pipe", what);
    pid_t pid = fork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        return vs_error_errno(-errno, "%s: fork", what);
    }
    if (pid == 0) {
        dup2(pipefd[1], 2);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        execv(prog, argv);
        _exit(127);
    }
    close(pipefd[1]);
    char buf[1024];
    size_t used = 0;
    ssize_t n;
    while ((n = read(pipefd[0], buf + used, sizeof(buf) - 1 - used)) > 0 &&
           used + (size_t)n < sizeof(buf) - 1)
        used += (size_t)n;
    if (n > 0)
        used += (size_t)n;
    while (n > 0) { /* drain the rest so the child never blocks */
        char sink[512];
        n = read(pipefd[0], sink, sizeof(sink));
    }
    buf[used] = 0;
    close(pipefd[0]);
    /* one line: drop blank lines, join the rest with "; " */
    char *text = buf;
    while (*text == '\n' || *text == ' ')
        text++;
    size_t tl = strlen(text);
    while (tl && (text[tl - 1] == '\n' || text[tl - 1] == ' '))
        text[--tl] = 0;
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (err_line && err_len) {
        char *nl = strchr(text, '\n');
        snprintf(err_line, err_len, "%.*s", nl ? (int)(nl - text) : (int)tl, text);
    }
    for (char *p = text; *p; p++)
        if (*p == '\n')
            *p = ' ';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    return vs_error(-EIO, "%s: %s failed (exit %d)%s%s", what, argv[0],
                    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                    text[0] ? ": " : "", text);
}

/* ---- store ----------------------------------------------------------------------------------- */

int vs_net_store_open(const char *state_dir, struct vs_net_store **out)
{
    const char *dir = state_dir ? state_dir : VS_NET_DEFAULT_STATE_DIR;
    int rc = mkdir_p(dir);
    if (rc < 0)
        return rc;
    struct vs_net_store *s = vs_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->dir = vs_strdup(dir);
    char *lock = vs_asprintf("%s/.lock", dir);
    s->lock_fd = lock ? open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644) : -1;
    free(lock);
    if (!s->dir || s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX) < 0) {
        rc = vs_error_errno(errno ? -errno : -ENOMEM, "%s: cannot lock the network state", dir);
        vs_net_store_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void vs_net_store_close(struct vs_net_store *store)
{
    if (!store)
        return;
    if (store->lock_fd >= 0)
        close(store->lock_fd);
    free(store->dir);
    free(store);
}

static char *def_path(struct vs_net_store *s, const char *name)
{
    return vs_asprintf("%s/%s.net", s->dir, name);
}

char *vs_net_run_dir(struct vs_net_store *store, const char *name)
{
    return vs_asprintf("%s/%s.run", store->dir, name);
}

static char *run_path(struct vs_net_store *s, const char *name, const char *file)
{
    return vs_asprintf("%s/%s.run/%s", s->dir, name, file);
}

static bool run_file_exists(struct vs_net_store *s, const char *name, const char *file)
{
    char *p = run_path(s, name, file);
    bool e = p && access(p, F_OK) == 0;
    free(p);
    return e;
}

static int run_file_write(struct vs_net_store *s, const char *name, const char *file,
                          const char *text)
{
    char *dir = vs_net_run_dir(s, name);
    int rc = dir ? mkdir_p(dir) : -ENOMEM;
    free(dir);
    if (rc < 0)
        return rc;
    char *p = run_path(s, name, file);
    rc = p ? write_file(p, text) : -ENOMEM;
    free(p);
    return rc;
}

static void run_file_remove(struct vs_net_store *s, const char *name, const char *file)
{
    char *p = run_path(s, name, file);
    if (p)
        unlink(p);
    free(p);
}

/* NAME.run/FILE into *text; a file that does not exist leaves *text NULL and is no error (nothing
 * recorded yet), another failure is one line: "network NAME: cannot read WHAT". */
static int run_file_read(struct vs_net_store *s, const char *name, const char *file,
                         const char *what, char **text)
{
    *text = NULL;
    char *p = run_path(s, name, file);
    if (!p)
        return -ENOMEM;
    int rc = read_file(p, text);
    free(p);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return vs_error_errno(rc, "network %s: cannot read %s", name, what);
    return 0;
}

int vs_net_get(struct vs_net_store *store, const char *name, struct vs_net_def *out)
{
    char *path = def_path(store, name), *text = NULL;
    if (!path)
        return -ENOMEM;
    int rc = read_file(path, &text);
    if (rc == -ENOENT)
        rc = vs_error(-ENOENT, "network %s is not defined", name);
    else if (rc < 0)
        rc = vs_error_errno(rc, "%s: cannot read", path);
    else
        rc = vs_net_def_parse(text, path, out);
    free(text);
    free(path);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int vs_net_names(struct vs_net_store *store, char ***names, size_t *count)
{
    DIR *d = opendir(store->dir);
    if (!d)
        return vs_error_errno(-errno, "%s: cannot list", store->dir);
    char **list = NULL;
    size_t n = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".net") || e->d_name[0] == '.')
            continue;
        char **l = realloc(list, (n + 1) * sizeof(*l));
        if (!l || !(l[n] = strndup(e->d_name, len - 4))) {
            if (l)
                list = l;
            rc = vs_error(-ENOMEM, "out of memory");
            break;
        }
        list = l;
        n++;
    }
    closedir(d);
    if (rc < 0) {
        vs_net_names_free(list, n);
        return rc;
    }
    if (n)
        qsort(list, n, sizeof(*list), cmp_str);
    *names = list;
    *count = n;
    return 0;
}

void vs_net_names_free(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

/* ---- taps file ------------------------------------------------------------------------------- */

static int taps_load(struct vs_net_store *s, const char *name, struct vs_net_tap **out,
                     size_t *count)
{
    *out = NULL;
    *count = 0;
    char *text;
    int rc = run_file_read(s, name, "taps", "its taps", &text);
    if (rc < 0 || !text)
        return rc;
    struct vs_net_tap *taps = NULL;
    size_t n = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char tap[64], mac[64], ip[64];
        unsigned rate;
        if (sscanf(line, "%63s %63s %63s %u", tap, mac, ip, &rate) != 4 ||
            strlen(tap) > VS_NET_IFNAME_MAX)
            continue;
        struct vs_net_tap t = {.rate_mbit = rate};
        memcpy(t.name, tap, strlen(tap) + 1);
        if (vs_mac_parse(mac, &t.mac) < 0 || (strcmp(ip, "-") && vs_ipv4_parse(ip, &t.ip) < 0))
            continue;
        struct vs_net_tap *l = realloc(taps, (n + 1) * sizeof(*l));
        if (!l) {
            free(taps);
            free(text);
            return vs_error(-ENOMEM, "out of memory");
        }
        taps = l;
        taps[n++] = t;
    }
    vs_error_clear();
    free(text);
    *out = taps;
    *count = n;
    return 0;
}

static int taps_save(struct vs_net_store *s, const char *name, const struct vs_net_tap *taps,
                     size_t n)
{
    struct strbuf sb = {0};
    sb_printf(&sb, "# tap mac ip rate-mbit (written by vessel)\n");
    for (size_t i = 0; i < n; i++) {
        char m[18], a[16];
        sb_printf(&sb, "%s %s %s %u\n", taps[i].name, vs_mac_format(&taps[i].mac, m),
                  taps[i].ip ? vs_ipv4_format(taps[i].ip, a) : "-", taps[i].rate_mbit);
    }
    char *text = sb_finish(&sb);
    if (!text)
        return -ENOMEM;
    int rc = run_file_write(s, name, "taps", text);
    free(text);
    return rc;
}

/* ---- everything defined, for the cross-network checks --------------------------------------- */

struct net_all {
    char **names;
    size_t n;
    struct vs_net_def *defs;
    struct vs_net_tap **taps;
    size_t *n_taps;
};

static void net_all_free(struct net_all *a)
{
    for (size_t i = 0; i < a->n; i++) {
        vs_net_def_free(&a->defs[i]);
        free(a->taps[i]);
    }
    free(a->defs);
    free(a->taps);
    free(a->n_taps);
    vs_net_names_free(a->names, a->n);
    memset(a, 0, sizeof(*a));
}

static int net_all_load(struct vs_net_store *s, struct net_all *a)
{
    memset(a, 0, sizeof(*a));
    int rc = vs_net_names(s, &a->names, &a->n);
    if (rc < 0)
        return rc;
    a->defs = vs_calloc(a->n + 1, sizeof(*a->defs));
    a->taps = vs_calloc(a->n + 1, sizeof(*a->taps));
    a->n_taps = vs_calloc(a->n + 1, sizeof(*a->n_taps));
    if (!a->defs || !a->taps || !a->n_taps) {
        net_all_free(a);
        return -ENOMEM;
    }
    for (size_t i = 0; i < a->n; i++) {
        rc = vs_net_get(s, a->names[i], &a->defs[i]);
        if (rc == 0)
            rc = taps_load(s, a->names[i], &a->taps[i], &a->n_taps[i]);
        if (rc < 0) {
            net_all_free(a);
            return rc;
        }
    }
    return 0;
}

static bool ranges_overlap(uint32_t a1, uint32_t a2, uint32_t b1, uint32_t b2)
{
    return ntohl(a1) <= ntohl(b2) && ntohl(b1) <= ntohl(a2);
}

/* Where a MAC is already used: another network's NIC or reservation, or a host interface. */
static int mac_check_free(const struct net_all *all, const char *self_net, const struct vs_mac *m)
{
    char ms[18];
    vs_mac_format(m, ms);
    for (size_t i = 0; i < all->n; i++) {
        for (size_t j = 0; j < all->n_taps[i]; j++)
            if (vs_mac_equal(&all->taps[i][j].mac, m))
                return vs_error(-EEXIST, "MAC %s is already used by tap %s on network %s", ms,
                                all->taps[i][j].name, all->names[i]);
        if (self_net && !strcmp(all->names[i], self_net))
            continue;
        for (size_t j = 0; j < all->defs[i].n_reservations; j++)
            if (vs_mac_equal(&all->defs[i].reservations[j].mac, m))
                return vs_error(-EEXIST, "MAC %s is reserved on network %s", ms, all->names[i]);
    }
    struct vs_link *links;
    size_t n;
    int rc = vs_link_list(&links, &n);
    if (rc < 0)
        return rc;
    struct vs_mac host;
    vs_mac_tap_host(m, &host);
    for (size_t i = 0; i < n; i++) {
        if (links[i].has_mac &&
            (vs_mac_equal(&links[i].mac, m) || vs_mac_equal(&links[i].mac, &host))) {
            rc = vs_error(-EEXIST, "MAC %s is already used by interface %s on this host", ms,
                          links[i].name);
            break;
        }
    }
    free(links);
    return rc;
}

static int check_against_others(const struct net_all *all, const struct vs_net_def *def)
{
    char a[16], b[16], c[16], d[16];
    const char *n = def->name;
    for (size_t i = 0; i < all->n; i++) {
        const struct vs_net_def *o = &all->defs[i];
        if (!strcmp(o->name, n))
            continue;
        if (!strcmp(o->bridge, def->bridge))
            return vs_error(-EEXIST, "network %s: bridge %s already belongs to network %s", n,
                            def->bridge, o->name);
        if (def->dhcp_first && o->dhcp_first &&
            ranges_overlap(def->dhcp_first, def->dhcp_last, o->dhcp_first, o->dhcp_last))
            return vs_error(
                -EEXIST, "network %s: DHCP range %s-%s overlaps network %s's range %s-%s", n,
                vs_ipv4_format(def->dhcp_first, a), vs_ipv4_format(def->dhcp_last, b), o->name,
                vs_ipv4_format(o->dhcp_first, c), vs_ipv4_format(o->dhcp_last, d));
        if (def->prefix && o->prefix) {
            uint32_t p = VS_MIN(def->prefix, o->prefix);
            uint32_t mask = htonl(~0u << (32 - p));
            if ((def->subnet & mask) == (o->subnet & mask))
                return vs_error(-EEXIST, "network %s: subnet %s/%u overlaps network %s's %s/%u", n,
                                vs_ipv4_format(def->subnet, a), def->prefix, o->name,
                                vs_ipv4_format(o->subnet, b), o->prefix);
        }
        if (def->kind == VS_NET_VXLAN && o->kind == VS_NET_VXLAN && def->vni == o->vni &&
            (def->dstport ? def->dstport : 4789) == (o->dstport ? o->dstport : 4789))
            return vs_error(-EEXIST, "network %s: VNI %u is already used by network %s", n,
                            def->vni, o->name);
        for (size_t r = 0; r < def->n_reservations; r++) {
            for (size_t j = 0; j < o->n_reservations; j++)
                if (vs_mac_equal(&def->reservations[r].mac, &o->reservations[j].mac))
                    return vs_error(-EEXIST, "network %s: MAC %s is reserved on network %s too", n,
                                    vs_mac_format(&def->reservations[r].mac, a), o->name);
            for (size_t j = 0; j < all->n_taps[i]; j++)
                if (vs_mac_equal(&def->reservations[r].mac, &all->taps[i][j].mac))
                    return vs_error(-EEXIST, "network %s: MAC %s is used by tap %s on network %s",
                                    n, vs_mac_format(&def->reservations[r].mac, a),
                                    all->taps[i][j].name, o->name);
        }
    }
    return 0;
}

static char *vxlan_name(const struct vs_net_def *def)
{
    return vs_asprintf("vx-%u", def->vni);
}

/* The host facts a definition depends on: the host bridge of a bridged network, a free VNI. */
static int check_host(const struct vs_net_def *def)
{
    const char *n = def->name;
    if (def->kind == VS_NET_BRIDGED) {
        struct vs_link l;
        if (vs_link_get(def->bridge, &l) < 0)
            return vs_error(-ENODEV, "network %s: host bridge %s does not exist", n, def->bridge);
        if (strcmp(l.kind, "bridge"))
            return vs_error(-EINVAL, "network %s: %s is not a bridge (it is a %s device)", n,
                            def->bridge, l.kind[0] ? l.kind : "plain");
    }
    if (def->kind == VS_NET_VXLAN) {
        struct vs_link *links;
        size_t count;
        int rc = vs_link_list(&links, &count);
        if (rc < 0)
            return rc;
        char *own = vxlan_name(def);
        for (size_t i = 0; i < count && rc == 0; i++)
            if (links[i].vxlan_vni == (int)def->vni && own && strcmp(links[i].name, own))
                rc = vs_error(-EEXIST, "network %s: VNI %u is already used by %s on this host", n,
                              def->vni, links[i].name);
        free(own);
        free(links);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vs_net_define(struct vs_net_store *store, struct vs_net_def *def)
{
    int rc = vs_net_def_validate(def);
    if (rc < 0)
        return rc;
    char *path = def_path(store, def->name);
    if (!path)
        return -ENOMEM;
    if (access(path, F_OK) == 0) {
        free(path);
        return vs_error(-EEXIST, "network %s is already defined", def->name);
    }
    struct net_all all;
    rc = net_all_load(store, &all);
    if (rc == 0)
        rc = check_against_others(&all, def);
    net_all_free(&all);
    if (rc == 0)
        rc = check_host(def);
    if (rc == 0 && def->kind != VS_NET_BRIDGED && vs_link_exists(def->bridge))
        rc = vs_error(-EEXIST,
                      "network %s: bridge %s already exists on this host (use --kind "
                      "bridged to attach to it, or another --bridge name)",
                      def->name, def->bridge);
    char *text = rc == 0 ? vs_net_def_print(def) : NULL;
    if (rc == 0 && !text)
        rc = -ENOMEM;
    if (rc == 0)
        rc = write_file(path, text);
    free(text);
    free(path);
    return rc;
}

static void remove_run_dir(struct vs_net_store *s, const char *name)
{
    static const char *const files[] = {
        "taps",        "started",        "nft.conf",       "dnsmasq.conf",
        "dnsmasq.pid", "dnsmasq.leases", "bridge-made",    "dnsmasq.leases.tmp",
        "leased",      "lease-hook",     "lease-hook.log", "nft-leased.conf"};
    for (size_t i = 0; i < VS_ARRAY_SIZE(files); i++)
        run_file_remove(s, name, files[i]);
    char *dir = vs_net_run_dir(s, name);
    if (dir)
        rmdir(dir);
    free(dir);
}

int vs_net_undefine(struct vs_net_store *store, const char *name)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    vs_net_def_free(&def);
    if (run_file_exists(store, name, "started"))
        return vs_error(-EBUSY, "network %s is started: stop it first (vessel net stop %s)", name,
                        name);
    remove_run_dir(store, name);
    char *path = def_path(store, name);
    if (!path)
        return -ENOMEM;
    if (unlink(path) < 0)
        rc = vs_error_errno(-errno, "%s: cannot remove", path);
    free(path);
    return rc;
}

/* ---- dnsmasq --------------------------------------------------------------------------------- */

static int dnsmasq_pid(struct vs_net_store *s, const char *name)
{
    char *p = run_path(s, name, "dnsmasq.pid"), *text = NULL;
    if (!p)
        return 0;
    int rc = read_file(p, &text);
    free(p);
    if (rc < 0)
        return 0;
    int pid = atoi(text);
    free(text);
    if (pid <= 1 || kill(pid, 0) < 0)
        return 0;
    char comm_path[64], *comm = NULL;
    snprintf(comm_path, sizeof(comm_path), "/proc/%d/comm", pid);
    if (read_file(comm_path, &comm) < 0)
        return 0;
    bool is_dnsmasq = !strncmp(comm, "dnsmasq", 7);
    free(comm);
    return is_dnsmasq ? pid : 0;
}

char *vs_net_dnsmasq_config(const struct vs_net_def *def, const char *run_dir)
{
    struct strbuf sb = {0};
    char a[16], b[16], c[16];
    uint32_t mask = htonl(~0u << (32 - def->prefix));
    sb_printf(&sb, "# dnsmasq for vessel network %s (generated: edits are overwritten)\n",
              def->name);
    sb_printf(&sb, "interface=%s\nbind-interfaces\nexcept-interface=lo\n", def->bridge);
    sb_printf(&sb, "no-resolv\nno-hosts\nstrict-order\ndhcp-authoritative\n");
    sb_printf(&sb, "pid-file=%s/dnsmasq.pid\ndhcp-leasefile=%s/dnsmasq.leases\n", run_dir, run_dir);
    /* every lease change reaches `vessel net lease-event`, which feeds the anti-spoofing set;
     * renewals too, so the recorded expiry stays true */
    sb_printf(&sb, "dhcp-script=%s/lease-hook\nscript-on-renewal\n", run_dir);
    sb_printf(&sb, "dhcp-range=%s,%s,%s,%u\n", vs_ipv4_format(def->dhcp_first, a),
              vs_ipv4_format(def->dhcp_last, b), vs_ipv4_format(mask, c), def->lease_seconds);
    sb_printf(&sb, "dhcp-option=option:router,%s\n", vs_ipv4_format(def->gateway, a));
    if (def->n_dns) {
        sb_printf(&sb, "dhcp-option=option:dns-server");
        for (size_t i = 0; i < def->n_dns; i++)
            sb_printf(&sb, ",%s", vs_ipv4_format(def->dns[i], a));
        sb_printf(&sb, "\n");
        for (size_t i = 0; i < def->n_dns; i++)
            sb_printf(&sb, "server=%s\n", vs_ipv4_format(def->dns[i], a));
    }
    for (size_t i = 0; i < def->n_reservations; i++) {
        const struct vs_net_reservation *r = &def->reservations[i];
        char m[18];
        sb_printf(&sb, "dhcp-host=%s,%s%s%s\n", vs_mac_format(&r->mac, m), vs_ipv4_format(r->ip, a),
                  r->hostname ? "," : "", r->hostname ? r->hostname : "");
    }
    return sb_finish(&sb);
}

/* The vessel program that dnsmasq's hook runs: this program when it is `vessel`, else a
 * `vessel` next to it (vesseld) or in ../bin (a test binary), else one on the usual paths. */
static char *vessel_program(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash && !strcmp(slash + 1, "vessel"))
            return vs_strdup(self);
        if (slash) {
            *slash = 0;
            static const char *const near[] = {"/vessel", "/../bin/vessel"};
            for (size_t i = 0; i < VS_ARRAY_SIZE(near); i++) {
                char *p = vs_asprintf("%s%s", self, near[i]);
                if (p && access(p, X_OK) == 0)
                    return p;
                free(p);
            }
        }
    }
    const char *found = find_program("vessel");
    return found ? vs_strdup(found) : NULL;
}

/* 'text' for sh, whatever it contains. */
static void sb_shell_quote(struct strbuf *sb, const char *text)
{
    sb_printf(sb, "'");
    for (const char *p = text; *p; p++) {
        if (*p == '\'')
            sb_printf(sb, "'\\''");
        else
            sb_printf(sb, "%c", *p);
    }
    sb_printf(sb, "'");
}

/* NAME.run/lease-hook: dnsmasq's dhcp-script, `vessel net --state DIR lease-event NAME ACTION MAC
 * IP [HOSTNAME]`; what it prints goes to lease-hook.log. */
static int lease_hook_write(struct vs_net_store *s, const char *name)
{
    char *prog = vessel_program();
    char *log = run_path(s, name, "lease-hook.log");
    struct strbuf sb = {0};
    sb_printf(&sb, "#!/bin/sh\n# dnsmasq's dhcp-script for vessel network %s (generated)\n", name);
    if (prog) {
        sb_printf(&sb, "exec ");
        sb_shell_quote(&sb, prog);
        sb_printf(&sb, " net --state ");
        sb_shell_quote(&sb, s->dir);
        sb_printf(&sb, " lease-event ");
        sb_shell_quote(&sb, name);
        sb_printf(&sb, " \"$@\" 2>>");
        sb_shell_quote(&sb, log ? log : "/dev/null");
        sb_printf(&sb, "\n");
    } else {
        vs_warn("network %s: no vessel program found for dnsmasq's lease hook: guests with "
                "dynamic leases cannot send IPv4 until it is installed",
                name);
        sb_printf(&sb, "echo 'vessel was not found when the network started' >&2\nexit 1\n");
    }
    free(prog);
    free(log);
    char *text = sb_finish(&sb);
    if (!text)
        return -ENOMEM;
    int rc = run_file_write(s, name, "lease-hook", text);
    free(text);
    char *path = run_path(s, name, "lease-hook");
    if (rc == 0 && (!path || chmod(path, 0755) < 0))
        rc = vs_error_errno(path ? -errno : -ENOMEM, "%s: cannot make it executable",
                            path ? path : "lease-hook");
    free(path);
    return rc;
}

static int dnsmasq_start(struct vs_net_store *s, const struct vs_net_def *def)
{
    if (dnsmasq_pid(s, def->name))
        return 0;
    char *run_dir = vs_net_run_dir(s, def->name);
    char *conf = run_dir ? vs_net_dnsmasq_config(def, run_dir) : NULL;
    char *conf_path = run_path(s, def->name, "dnsmasq.conf");
    int rc = (run_dir && conf && conf_path) ? 0 : -ENOMEM;
    if (rc == 0)
        rc = lease_hook_write(s, def->name);
    if (rc == 0)
        rc = run_file_write(s, def->name, "dnsmasq.conf", conf);
    if (rc == 0) {
        /* dnsmasq runs as its own user after start and rewrites the leases file in place */
        char *leases = run_path(s, def->name, "dnsmasq.leases");
        if (leases) {
            int fd = open(leases, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0)
                close(fd);
        }
        free(leases);
        char *arg = vs_asprintf("--conf-file=%s", conf_path);
        char *argv[] = {"dnsmasq", arg, NULL};
        char what[96];
        snprintf(what, sizeof(what), "network %s: dnsmasq", def->name);
        rc = arg ? run_program(what, argv, NULL, 0) : -ENOMEM;
        free(arg);
    }
    /* dnsmasq writes its pid file before the parent exits; allow a moment anyway */
    for (int i = 0; rc == 0 && i < 50 && !dnsmasq_pid(s, def->name); i++)
        usleep(20000);
    if (rc == 0 && !dnsmasq_pid(s, def->name))
        rc = vs_error(-EIO, "network %s: dnsmasq started but is not running (see syslog)",
                      def->name);
    free(conf_path);
    free(conf);
    free(run_dir);
    return rc;
}

static void dnsmasq_stop(struct vs_net_store *s, const char *name)
{
    int pid = dnsmasq_pid(s, name);
    if (pid) {
        kill(pid, SIGTERM);
        for (int i = 0; i < 100 && kill(pid, 0) == 0; i++)
            usleep(20000);
        if (kill(pid, 0) == 0)
            kill(pid, SIGKILL);
    }
    run_file_remove(s, name, "dnsmasq.pid");
}

/* ---- nftables -------------------------------------------------------------------------------- */

static char *nft_table_name(const char *net)
{
    char *t = vs_asprintf("vessel_%s", net);
    for (char *p = t; p && *p; p++)
        if (*p == '-')
            *p = '_';
    return t;
}

/* Skip leases dnsmasq let expire more than a minute ago (its "del" event may be late or lost
 * while it was not running); 0 is an infinite lease. */
static bool lease_current(const struct vs_net_lease *l, int64_t now)
{
    return l->expiry == 0 || l->expiry + 60 >= now;
}

/* The elements of the set `leased` (MAC . IPv4): the taps' given addresses, the reservations and
 * dnsmasq's current leases, each pair once. Returns how many were printed. */
static size_t leased_elements(struct strbuf *sb, const struct vs_net_def *def,
                              const struct vs_net_tap *taps, size_t n_taps,
                              const struct vs_net_lease *leases, size_t n_leases)
{
    size_t total = n_taps + def->n_reservations + n_leases, n = 0;
    struct vs_net_lease *pairs = vs_calloc(total + 1, sizeof(*pairs));
    if (!pairs) {
        sb->failed = true;
        return 0;
    }
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < total; i++) {
        struct vs_net_lease p = {0};
        if (i < n_taps) {
            if (!taps[i].ip)
                continue;
            p.mac = taps[i].mac;
            p.ip = taps[i].ip;
        } else if (i < n_taps + def->n_reservations) {
            p.mac = def->reservations[i - n_taps].mac;
            p.ip = def->reservations[i - n_taps].ip;
        } else {
            const struct vs_net_lease *l = &leases[i - n_taps - def->n_reservations];
            if (!lease_current(l, now))
                continue;
            p = *l;
        }
        bool seen = false;
        for (size_t j = 0; j < n && !seen; j++)
            seen = vs_mac_equal(&pairs[j].mac, &p.mac) && pairs[j].ip == p.ip;
        if (!seen)
            pairs[n++] = p;
    }
    for (size_t i = 0; i < n; i++) {
        char m[18], a[16];
        sb_printf(sb, "%s%s . %s", i ? ", " : "", vs_mac_format(&pairs[i].mac, m),
                  vs_ipv4_format(pairs[i].ip, a));
    }
    free(pairs);
    return n;
}

/* A tap whose IPv4 source addresses are checked: one with a known address, and every tap of a
 * NAT network with DHCP (its address is the lease dnsmasq gives its MAC). */
static bool tap_ip_checked(const struct vs_net_def *def, const struct vs_net_tap *t)
{
    return t->ip || (def->kind == VS_NET_NAT && def->dhcp_first);
}

char *vs_net_nft_ruleset(const struct vs_net_def *def, const struct vs_net_tap *taps, size_t n_taps,
                         const struct vs_net_lease *leases, size_t n_leases)
{
    char *table = nft_table_name(def->name);
    if (!table)
        return NULL;
    struct strbuf sb = {0};
    char m[18], a[16], b[16];
    sb_printf(&sb, "# nftables for vessel network %s (generated: edits are overwritten)\n",
              def->name);
    /* "add" then "delete" then the table: replaces it whether or not it existed, atomically */
    sb_printf(&sb, "add table bridge %s\ndelete table bridge %s\n", table, table);
    sb_printf(&sb, "table bridge %s {\n", table);
    /* the (MAC . IPv4) pairs a guest may send from; `vessel net lease-event` (dnsmasq's
     * dhcp-script) keeps the leased ones in sync without touching the rules or their counters */
    sb_printf(&sb, "    set leased {\n        type ether_addr . ipv4_addr\n");
    struct strbuf elems = {0};
    size_t n_elems = leased_elements(&elems, def, taps, n_taps, leases, n_leases);
    char *elem_text = sb_finish(&elems);
    if (!elem_text)
        sb.failed = true;
    else if (n_elems)
        sb_printf(&sb, "        elements = { %s }\n", elem_text);
    free(elem_text);
    sb_printf(&sb, "    }\n");
    sb_printf(&sb, "    chain guest_in {\n"
                   "        type filter hook prerouting priority -200; policy accept;\n");
    for (size_t i = 0; i < n_taps; i++) {
        const struct vs_net_tap *t = &taps[i];
        vs_mac_format(&t->mac, m);
        if (t->rate_mbit) {
            /* what the guest sends: nftables' byte limit (its bucket holds one second of rate,
             * so a guest may burst that much before the limit bites; sustained rate is exact).
             * First, so that the DHCP accept below cannot bypass it. */
            sb_printf(&sb,
                      "        iifname \"%s\" limit rate over %llu bytes/second counter drop\n",
                      t->name, (unsigned long long)t->rate_mbit * 125000);
        }
        sb_printf(&sb, "        iifname \"%s\" ether saddr != %s counter drop\n", t->name, m);
        sb_printf(&sb, "        iifname \"%s\" arp saddr ether != %s counter drop\n", t->name, m);
        if (tap_ip_checked(def, t)) {
            /* a VLAN tag would hide the IPv4 header from the checks below */
            sb_printf(&sb, "        iifname \"%s\" ether type { 8021q, 8021ad } counter drop\n",
                      t->name);
            /* DHCP before the guest has an address: DISCOVER/REQUEST from 0.0.0.0 only */
            sb_printf(&sb,
                      "        iifname \"%s\" ip saddr 0.0.0.0 ip daddr 255.255.255.255 "
                      "udp sport 68 udp dport 67 accept\n",
                      t->name);
            sb_printf(&sb,
                      "        iifname \"%s\" ether type ip ether saddr . ip saddr != @leased "
                      "counter drop\n",
                      t->name);
            /* ARP probes (RFC 5227) come from 0.0.0.0 and teach nobody anything */
            sb_printf(&sb,
                      "        iifname \"%s\" arp saddr ip != 0.0.0.0 "
                      "arp saddr ether . arp saddr ip != @leased counter drop\n",
                      t->name);
        }
    }
    sb_printf(&sb, "    }\n");
    sb_printf(&sb, "}\n");
    if (def->kind == VS_NET_NAT) {
        vs_ipv4_format(def->subnet, a);
        snprintf(b, sizeof(b), "%u", def->prefix);
        sb_printf(&sb, "add table ip %s\ndelete table ip %s\n", table, table);
        sb_printf(&sb, "table ip %s {\n", table);
        sb_printf(&sb,
                  "    chain postrouting {\n"
                  "        type nat hook postrouting priority srcnat; policy accept;\n"
                  "        ip saddr %s/%s ip daddr != %s/%s masquerade\n    }\n",
                  a, b, a, b);
        sb_printf(&sb,
                  "    chain forward {\n"
                  "        type filter hook forward priority 0; policy accept;\n"
                  "        iifname \"%s\" ip saddr %s/%s accept\n"
                  "        iifname \"%s\" drop\n"
                  "        oifname \"%s\" ct state established,related accept\n"
                  "        oifname \"%s\" drop\n    }\n}\n",
                  def->bridge, a, b, def->bridge, def->bridge, def->bridge);
    }
    free(table);
    return sb_finish(&sb);
}

/* ---- leased addresses: NAME.run/leased, kept by dnsmasq's dhcp-script ------------------------ */

/* The hook's own record of dnsmasq's leases, in dnsmasq's leases format ("EXPIRY MAC IP *"), so
 * that a regenerated ruleset starts with them and no lease event is lost to a reload. */
static int leased_load(struct vs_net_store *s, const char *name, struct vs_net_lease **out,
                       size_t *count)
{
    *out = NULL;
    *count = 0;
    char *text;
    int rc = run_file_read(s, name, "leased", "its leased addresses", &text);
    if (rc < 0 || !text)
        return rc;
    rc = vs_net_leases_parse(text, out, count);
    free(text);
    return rc;
}

static int leased_save(struct vs_net_store *s, const char *name, const struct vs_net_lease *l,
                       size_t n)
{
    struct strbuf sb = {0};
    sb_printf(&sb, "# expiry mac ip (dnsmasq's leases, as its dhcp-script reported them)\n");
    for (size_t i = 0; i < n; i++) {
        char m[18], a[16];
        sb_printf(&sb, "%lld %s %s *\n", (long long)l[i].expiry, vs_mac_format(&l[i].mac, m),
                  vs_ipv4_format(l[i].ip, a));
    }
    char *text = sb_finish(&sb);
    if (!text)
        return -ENOMEM;
    int rc = run_file_write(s, name, "leased", text);
    free(text);
    return rc;
}

/* TEXT into NAME.run/FILE, then `nft -f` it; an error names "network NAME: WHAT". */
static int nft_apply(struct vs_net_store *s, const char *name, const char *file, const char *text,
                     const char *what)
{
    int rc = run_file_write(s, name, file, text);
    char *path = run_path(s, name, file);
    if (rc == 0 && path) {
        char *argv[] = {"nft", "-f", path, NULL};
        char w[96];
        snprintf(w, sizeof(w), "network %s: %s", name, what);
        rc = run_program(w, argv, NULL, 0);
    }
    free(path);
    return rc;
}

static int nft_load(struct vs_net_store *s, const struct vs_net_def *def,
                    const struct vs_net_tap *taps, size_t n_taps)
{
    struct vs_net_lease *leases = NULL;
    size_t n_leases = 0;
    int rc = leased_load(s, def->name, &leases, &n_leases);
    if (rc < 0)
        return rc;
    char *rules = vs_net_nft_ruleset(def, taps, n_taps, leases, n_leases);
    free(leases);
    if (!rules)
        return -ENOMEM;
    rc = nft_apply(s, def->name, "nft.conf", rules, "nftables");
    free(rules);
    return rc;
}

static void nft_unload(struct vs_net_store *s, const char *name)
{
    char *table = nft_table_name(name);
    char *text = table ? vs_asprintf("add table bridge %s\ndelete table bridge %s\n"
                                     "add table ip %s\ndelete table ip %s\n",
                                     table, table, table, table)
                       : NULL;
    if (text)
        nft_apply(s, name, "nft.conf", text, "nftables");
    vs_error_clear();
    free(text);
    free(table);
}

/* ---- rate limits (tc) -------------------------------------------------------------------------
 */

/*
 * What the guest receives at rate_mbit: a token-bucket qdisc on the tap's egress paces it (10 ms
 * of burst, at least 16 KiB). What the guest sends is limited in the nftables ruleset: tc's
 * policer (act_police) is not in every kernel, nftables' limit is.
 */
static int tc_apply(const char *tap, unsigned rate_mbit)
{
    if (!rate_mbit)
        return 0;
    char rate[32], burst[32], what[64];
    uint64_t bytes_per_s = (uint64_t)rate_mbit * 125000;
    snprintf(rate, sizeof(rate), "%umbit", rate_mbit);
    snprintf(burst, sizeof(burst), "%llu", (unsigned long long)VS_MAX(bytes_per_s / 100, 16384));
    snprintf(what, sizeof(what), "tap %s: rate limit", tap);
    char *tbf[] = {"tc",   "qdisc", "replace", "dev", (char *)tap, "root", "tbf",
                   "rate", rate,    "burst",   burst, "latency",   "50ms", NULL};
    return run_program(what, tbf, NULL, 0);
}

/* ---- start / stop ---------------------------------------------------------------------------- */

static int tap_bring_up(const struct vs_net_def *def, const struct vs_net_tap *t, uid_t uid,
                        gid_t gid)
{
    struct vs_mac host;
    vs_mac_tap_host(&t->mac, &host);
    int rc = vs_tap_create(t->name, &host, uid, gid);
    if (rc == 0) {
        rc = vs_link_set(t->name, def->bridge, def->mtu, 1);
        if (rc == 0)
            rc = tc_apply(t->name, t->rate_mbit);
        if (rc < 0) {
            char msg[256];
            snprintf(msg, sizeof(msg), "%s", vs_error_message());
            vs_link_delete(t->name);
            vs_error(rc, "%s", msg);
        }
    }
    return rc < 0 ? vs_error_prefix(rc, "network %s", def->name) : 0;
}

int vs_net_start(struct vs_net_store *store, const char *name)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    struct vs_net_tap *taps = NULL;
    size_t n_taps = 0;
    char *vx = NULL;
    rc = taps_load(store, name, &taps, &n_taps);
    if (rc < 0)
        goto out;
    rc = check_host(&def);
    if (rc < 0)
        goto out;
    if (def.kind != VS_NET_BRIDGED && !vs_link_exists(def.bridge)) {
        rc = vs_bridge_create(def.bridge, def.mtu);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "network %s", name);
            goto out;
        }
        run_file_write(store, name, "bridge-made", "1\n");
    }
    rc = vs_link_set(def.bridge, NULL, 0, 1);
    if (rc < 0)
        goto fail;
    if (def.kind == VS_NET_VXLAN) {
        vx = vxlan_name(&def);
        if (!vx) {
            rc = -ENOMEM;
            goto fail;
        }
        if (!vs_link_exists(vx)) {
            struct vs_vxlan_config cfg = {.name = vx,
                                          .vni = def.vni,
                                          .group = def.group,
                                          .local = def.local,
                                          .dev = def.vxlan_dev,
                                          .dstport = def.dstport,
                                          .mtu = def.mtu};
            rc = vs_vxlan_create(&cfg);
            for (size_t i = 0; rc == 0 && i < def.n_remotes; i++)
                rc = vs_vxlan_add_peer(vx, def.remotes[i]);
            if (rc < 0) {
                vs_link_delete(vx);
                goto fail;
            }
        }
        rc = vs_link_set(vx, def.bridge, 0, 1);
        if (rc < 0)
            goto fail;
    }
    if (def.kind == VS_NET_NAT) {
        rc = vs_link_add_ipv4(def.bridge, def.gateway, (int)def.prefix);
        if (rc < 0)
            goto fail;
        int fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, "1\n", 2) != 2)
                vs_warn("network %s: cannot enable IPv4 forwarding", name);
            close(fd);
        }
    }
    /* re-create the NICs attached before a stop (their MACs are kept) */
    for (size_t i = 0; i < n_taps; i++) {
        if (vs_link_exists(taps[i].name)) {
            rc = vs_link_set(taps[i].name, def.bridge, 0, 1);
        } else {
            rc = tap_bring_up(&def, &taps[i], (uid_t)-1, (gid_t)-1);
        }
        if (rc < 0)
            goto fail;
    }
    rc = nft_load(store, &def, taps, n_taps);
    if (rc < 0)
        goto fail;
    if (def.kind == VS_NET_NAT && def.dhcp_first) {
        rc = dnsmasq_start(store, &def);
        if (rc < 0)
            goto fail;
    }
    rc = run_file_write(store, name, "started", "1\n");
    if (rc < 0)
        goto fail;
    goto out;
fail : {
    /* undo what this call made, keep the message */
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", vs_error_message());
    if (!run_file_exists(store, name, "started"))
        vs_net_stop(store, name, true);
    rc = vs_error(rc, "%s", msg);
}
out:
    free(vx);
    free(taps);
    vs_net_def_free(&def);
    return rc;
}

int vs_net_stop(struct vs_net_store *store, const char *name, bool force)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    struct vs_net_tap *taps = NULL;
    size_t n_taps = 0;
    rc = taps_load(store, name, &taps, &n_taps);
    if (rc < 0)
        goto out;
    if (!force) {
        struct strbuf busy = {0};
        size_t n_busy = 0;
        for (size_t i = 0; i < n_taps; i++) {
            struct vs_link l;
            if (vs_link_get(taps[i].name, &l) == 0 && l.carrier) {
                sb_printf(&busy, "%s%s", n_busy ? ", " : "", taps[i].name);
                n_busy++;
            }
        }
        vs_error_clear();
        char *list = sb_finish(&busy);
        if (n_busy) {
            rc = vs_error(-EBUSY,
                          "network %s: %zu tap%s in use by a running VM (%s); stop the VM%s "
                          "or use --force",
                          name, n_busy, n_busy > 1 ? "s are" : " is", list ? list : "?",
                          n_busy > 1 ? "s" : "");
            free(list);
            goto out;
        }
        free(list);
    }
    for (size_t i = 0; i < n_taps; i++)
        if (vs_link_exists(taps[i].name))
            vs_link_delete(taps[i].name);
    dnsmasq_stop(store, name);
    nft_unload(store, name);
    if (def.kind == VS_NET_VXLAN) {
        char *vx = vxlan_name(&def);
        if (vx && vs_link_exists(vx))
            vs_link_delete(vx);
        free(vx);
    }
    if (def.kind != VS_NET_BRIDGED && run_file_exists(store, name, "bridge-made") &&
        vs_link_exists(def.bridge))
        vs_link_delete(def.bridge);
    run_file_remove(store, name, "bridge-made");
    run_file_remove(store, name, "started");
    vs_error_clear();
    rc = 0;
out:
    free(taps);
    vs_net_def_free(&def);
    return rc;
}

int vs_net_status(struct vs_net_store *store, const char *name, struct vs_net_status *out)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    memset(out, 0, sizeof(*out));
    out->started = run_file_exists(store, name, "started");
    out->bridge_present = vs_link_exists(def.bridge);
    out->dnsmasq_pid = dnsmasq_pid(store, name);
    rc = taps_load(store, name, &out->taps, &out->n_taps);
    vs_net_def_free(&def);
    return rc;
}

void vs_net_status_free(struct vs_net_status *st)
{
    free(st->taps);
    memset(st, 0, sizeof(*st));
}

/* ---- attach / detach ------------------------------------------------------------------------- */

int vs_net_attach_tap(struct vs_net_store *store, const char *name, const struct vs_net_attach *a,
                      struct vs_mac *mac_out)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    struct net_all all = {0};
    struct vs_net_tap *taps = NULL;
    size_t n_taps = 0;
    struct vs_mac *taken = NULL;
    if (!run_file_exists(store, name, "started")) {
        rc = vs_error(-ENOTCONN, "network %s is not started (vessel net start %s)", name, name);
        goto out;
    }
    if (!a->tap || !a->tap[0] || strlen(a->tap) > VS_NET_IFNAME_MAX) {
        rc = vs_error(-EINVAL, "network %s: tap name '%s' must be 1-%d characters", name,
                      a->tap ? a->tap : "", VS_NET_IFNAME_MAX);
        goto out;
    }
    rc = net_all_load(store, &all);
    if (rc < 0)
        goto out;
    size_t n_taken = 0;
    for (size_t i = 0; i < all.n; i++) {
        n_taken += all.n_taps[i] + all.defs[i].n_reservations;
        for (size_t j = 0; j < all.n_taps[i]; j++)
            if (!strcmp(all.taps[i][j].name, a->tap)) {
                rc = vs_error(-EEXIST, "tap %s is already attached to network %s", a->tap,
                              all.names[i]);
                goto out;
            }
    }
    if (vs_link_exists(a->tap)) {
        rc = vs_error(-EEXIST,
                      "network %s: tap %s: the name is already used by another "
                      "interface",
                      name, a->tap);
        goto out;
    }
    struct vs_net_tap t = {.rate_mbit = a->rate_mbit, .ip = a->ip};
    snprintf(t.name, sizeof(t.name), "%s", a->tap);
    if (a->mac) {
        rc = vs_mac_validate(a->mac);
        if (rc == 0)
            rc = mac_check_free(&all, name, a->mac);
        if (rc < 0) {
            rc = vs_error_prefix(rc, "network %s: tap %s", name, a->tap);
            goto out;
        }
        t.mac = *a->mac;
    } else {
        taken = vs_calloc(n_taken + 1, sizeof(*taken));
        if (!taken) {
            rc = -ENOMEM;
            goto out;
        }
        size_t k = 0;
        for (size_t i = 0; i < all.n; i++) {
            for (size_t j = 0; j < all.n_taps[i]; j++)
                taken[k++] = all.taps[i][j].mac;
            for (size_t j = 0; j < all.defs[i].n_reservations; j++)
                taken[k++] = all.defs[i].reservations[j].mac;
        }
        rc = vs_mac_allocate(taken, k, &t.mac);
        if (rc < 0)
            goto out;
    }
    if (!t.ip)
        for (size_t i = 0; i < def.n_reservations; i++)
            if (vs_mac_equal(&def.reservations[i].mac, &t.mac))
                t.ip = def.reservations[i].ip;
    if (t.ip && def.prefix) {
        uint32_t mask = htonl(~0u << (32 - def.prefix));
        if ((t.ip & mask) != def.subnet) {
            char ip[16];
            rc = vs_error(-EINVAL, "network %s: tap %s: address %s is not in the subnet", name,
                          a->tap, vs_ipv4_format(t.ip, ip));
            goto out;
        }
    }
    rc = taps_load(store, name, &taps, &n_taps);
    if (rc < 0)
        goto out;
    rc = tap_bring_up(&def, &t, a->uid, a->gid);
    if (rc < 0)
        goto out;
    struct vs_net_tap *l = realloc(taps, (n_taps + 1) * sizeof(*l));
    if (!l) {
        vs_link_delete(t.name);
        rc = vs_error(-ENOMEM, "out of memory");
        goto out;
    }
    taps = l;
    taps[n_taps++] = t;
    rc = nft_load(store, &def, taps, n_taps);
    if (rc == 0)
        rc = taps_save(store, name, taps, n_taps);
    if (rc < 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vs_error_message());
        vs_link_delete(t.name);
        nft_load(store, &def, taps, n_taps - 1);
        rc = vs_error(rc, "%s", msg);
        goto out;
    }
    if (mac_out)
        *mac_out = t.mac;
out:
    free(taken);
    free(taps);
    net_all_free(&all);
    vs_net_def_free(&def);
    return rc;
}

int vs_net_detach_tap(struct vs_net_store *store, const char *name, const char *tap)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    struct vs_net_tap *taps = NULL;
    size_t n_taps = 0;
    rc = taps_load(store, name, &taps, &n_taps);
    if (rc < 0)
        goto out;
    size_t i;
    for (i = 0; i < n_taps && strcmp(taps[i].name, tap); i++)
        ;
    if (i == n_taps) {
        rc = vs_error(-ENOENT, "network %s: tap %s is not attached to it", name, tap);
        goto out;
    }
    memmove(&taps[i], &taps[i + 1], (n_taps - i - 1) * sizeof(*taps));
    n_taps--;
    if (vs_link_exists(tap))
        vs_link_delete(tap);
    rc = taps_save(store, name, taps, n_taps);
    if (rc == 0 && run_file_exists(store, name, "started"))
        rc = nft_load(store, &def, taps, n_taps);
out:
    free(taps);
    vs_net_def_free(&def);
    return rc;
}

/* ---- leases ---------------------------------------------------------------------------------- */

/* A unicast IPv4 address a guest may hold: not 0.0.0.0/8, loopback, multicast or broadcast. */
static bool ipv4_is_host(uint32_t ip_be)
{
    uint32_t ip = ntohl(ip_be);
    return (ip >> 24) != 0 && (ip >> 24) != 127 && (ip >> 28) < 0xe;
}

int vs_net_leases_parse(const char *text, struct vs_net_lease **out, size_t *count)
{
    struct vs_net_lease *list = NULL;
    size_t n = 0;
    char *copy = vs_strdup(text), *save = NULL;
    if (!copy)
        return -ENOMEM;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char mac[64], ip[64], host[64] = "*";
        long long expiry;
        /* dnsmasq also writes "duid …" and IPv6 lines: skip what is not an IPv4 lease */
        if (sscanf(line, "%lld %63s %63s %63s", &expiry, mac, ip, host) < 3)
            continue;
        struct vs_net_lease l = {.expiry = expiry};
        if (vs_mac_parse(mac, &l.mac) < 0 || vs_ipv4_parse(ip, &l.ip) < 0 || !ipv4_is_host(l.ip))
            continue;
        /* the hostname is the guest's choice: keep it only when it is a plain name */
        if (strcmp(host, "*") && net_word_ok(host, sizeof(l.hostname) - 1))
            snprintf(l.hostname, sizeof(l.hostname), "%s", host);
        struct vs_net_lease *g = realloc(list, (n + 1) * sizeof(*g));
        if (!g) {
            free(list);
            free(copy);
            return vs_error(-ENOMEM, "out of memory");
        }
        list = g;
        list[n++] = l;
    }
    vs_error_clear();
    free(copy);
    *out = list;
    *count = n;
    return 0;
}

int vs_net_leases(struct vs_net_store *store, const char *name, struct vs_net_lease **out,
                  size_t *count)
{
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    bool nat = def.kind == VS_NET_NAT;
    vs_net_def_free(&def);
    if (!nat)
        return vs_error(-EINVAL, "network %s has no DHCP server (only kind nat does)", name);
    char *text;
    rc = run_file_read(store, name, "dnsmasq.leases", "the leases", &text);
    if (rc < 0)
        return rc;
    if (!text) {
        *out = NULL;
        *count = 0;
        return 0;
    }
    rc = vs_net_leases_parse(text, out, count);
    free(text);
    return rc;
}

/* ---- lease events: dnsmasq's dhcp-script → the anti-spoofing set --------------------------- */

/* Replace the elements of the running set `leased` in one transaction (flush + add): the rules
 * and their counters stay as they are. */
static int nft_set_sync(struct vs_net_store *s, const struct vs_net_def *def,
                        const struct vs_net_lease *leases, size_t n_leases)
{
    struct vs_net_tap *taps = NULL;
    size_t n_taps = 0;
    int rc = taps_load(s, def->name, &taps, &n_taps);
    if (rc < 0)
        return rc;
    char *table = nft_table_name(def->name);
    struct strbuf sb = {0}, elems = {0};
    size_t n = leased_elements(&elems, def, taps, n_taps, leases, n_leases);
    char *elem_text = sb_finish(&elems);
    if (!table || !elem_text)
        sb.failed = true;
    sb_printf(&sb, "flush set bridge %s leased\n", table ? table : "");
    if (n)
        sb_printf(&sb, "add element bridge %s leased { %s }\n", table ? table : "", elem_text);
    char *text = sb_finish(&sb);
    free(elem_text);
    free(table);
    free(taps);
    if (!text)
        return -ENOMEM;
    rc = nft_apply(s, def->name, "nft-leased.conf", text, "nftables set leased");
    free(text);
    return rc;
}

int vs_net_lease_event(struct vs_net_store *store, const char *name, const char *action,
                       const struct vs_net_lease *lease)
{
    bool add = !strcmp(action, "add") || !strcmp(action, "old");
    if (!add && strcmp(action, "del"))
        return 0; /* dnsmasq's tftp and arp-* events say nothing about leases */
    struct vs_net_def def;
    int rc = vs_net_get(store, name, &def);
    if (rc < 0)
        return rc;
    struct vs_net_lease *leases = NULL;
    size_t n = 0;
    char m[18], a[16];
    vs_mac_format(&lease->mac, m);
    vs_ipv4_format(lease->ip, a);
    if (def.kind != VS_NET_NAT || !def.prefix) {
        rc = vs_error(-EINVAL, "network %s has no DHCP server (only kind nat does)", name);
        goto out;
    }
    if (add && (vs_mac_validate(&lease->mac) < 0 || !ipv4_is_host(lease->ip) ||
                (lease->ip & htonl(~0u << (32 - def.prefix))) != def.subnet)) {
        char b[16];
        rc = vs_error(-EINVAL, "network %s: lease %s for %s is not an address of %s/%u", name, a, m,
                      vs_ipv4_format(def.subnet, b), def.prefix);
        goto out;
    }
    rc = leased_load(store, name, &leases, &n);
    if (rc < 0)
        goto out;
    /* one lease per MAC and per address: a new one replaces whatever either had */
    size_t kept = 0;
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < n; i++) {
        bool same_mac = vs_mac_equal(&leases[i].mac, &lease->mac);
        bool same_ip = leases[i].ip == lease->ip;
        bool drop = add ? (same_mac || same_ip) : (same_mac && same_ip);
        if (!drop && lease_current(&leases[i], now))
            leases[kept++] = leases[i];
    }
    n = kept;
    if (add) {
        struct vs_net_lease *l = realloc(leases, (n + 1) * sizeof(*l));
        if (!l) {
            rc = vs_error(-ENOMEM, "out of memory");
            goto out;
        }
        leases = l;
        leases[n] = *lease;
        leases[n].hostname[0] = 0;
        n++;
    }
    rc = leased_save(store, name, leases, n);
    if (rc == 0 && run_file_exists(store, name, "started")) {
        rc = nft_set_sync(store, &def, leases, n);
        if (rc < 0) {
            /* the table is gone or damaged (a flushed ruleset): load it whole again, from the
             * files, which already hold this lease */
            struct vs_net_tap *taps = NULL;
            size_t n_taps = 0;
            vs_error_clear();
            rc = taps_load(store, name, &taps, &n_taps);
            if (rc == 0)
                rc = nft_load(store, &def, taps, n_taps);
            free(taps);
        }
    }
out:
    free(leases);
    vs_net_def_free(&def);
    return rc;
}

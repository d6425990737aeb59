/*
 * lib/defs/def.c — the vessel VM definition: its struct's life cycle, the text format's parser,
 * the validator and the canonical printer.
 *
 * The idea: the parser is a line machine with a "current section" (top level, [disk], [nic],
 * [boot]); each key is looked up in the current section's table first and then in the top-level
 * table, so top-level keys may appear anywhere. Every value is checked where it is read, with its
 * line, and each field remembers its line so the cross-field validator can point at it too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "defs/defs-internal.h"

const char *const defs_action_names[3] = {"destroy", "restart", "preserve"};
const char *const defs_autostart_names[3] = {"never", "always", "was-running"};
const char *const defs_bus_names[4] = {"virtio", "ide", "scsi", "sata"};
const char *const defs_model_names[3] = {"virtio", "e1000", "rtl8139"};
const char *const defs_format_names[6] = {"raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"};
static const char *const media_names[2] = {"disk", "cdrom"};
static const char *const from_names[3] = {"kernel", "disk", "cdrom"};

const char *vm_action_name(enum vm_action a)
{
    return (unsigned)a < 3 ? defs_action_names[a] : "?";
}
const char *vm_autostart_name(enum vm_autostart a)
{
    return (unsigned)a < 3 ? defs_autostart_names[a] : "?";
}
const char *vm_disk_bus_name(enum vm_disk_bus b)
{
    return (unsigned)b < 4 ? defs_bus_names[b] : "?";
}
const char *vm_nic_model_name(enum vm_nic_model m)
{
    return (unsigned)m < 3 ? defs_model_names[m] : "?";
}

/* ---- messages -------------------------------------------------------------------------------- */

static void format_prefixed(char *buf, size_t len, const char *source, int line, const char *key,
                            const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static void format_prefixed(char *buf, size_t len, const char *source, int line, const char *key,
                            const char *fmt, va_list ap)
{
    size_t n = 0;
    buf[0] = '\0';
    if (source && *source)
        n += snprintf(buf + n, len - n, "%s: ", source);
    if (line > 0 && n < len)
        n += snprintf(buf + n, len - n, "line %d: ", line);
    if (key && n < len)
        n += snprintf(buf + n, len - n, "%s: ", key);
    if (n < len)
        vsnprintf(buf + n, len - n, fmt, ap);
}

int defs_error(const char *source, int line, const char *key, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    format_prefixed(buf, sizeof(buf), source, line, key, fmt, ap);
    va_end(ap);
    return vs_error(-EINVAL, "%s", buf);
}

void defs_warn(const char *source, int line, const char *key, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    format_prefixed(buf, sizeof(buf), source, line, key, fmt, ap);
    va_end(ap);
    vs_warn("%s", buf);
}

int defs_lookup(const char *const *names, size_t count, const char *text)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(names[i], text) == 0)
            return (int)i;
    return -1;
}

const char *defs_choices(const char *const *names, size_t count, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < count && n < len; i++)
        n += snprintf(buf + n, len - n, "%s%s",
                      i == 0           ? ""
                      : i + 1 == count ? " or "
                                       : ", ",
                      names[i]);
    return buf;
}

/* ---- small helpers --------------------------------------------------------------------------- */

char *defs_strndup_trim(const char *s, size_t len)
{
    while (len && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
        s++;
        len--;
    }
    while (len &&
           (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    char *out = vs_malloc(len + 1);
    if (!out)
        return NULL;
    memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

static bool name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

bool defs_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > VM_DEF_NAME_MAX || name[0] == '.' || name[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!name_char_ok(name[i]))
            return false;
    return true;
}

char *defs_sanitize_name(const char *name)
{
    size_t len = strlen(name);
    if (len > VM_DEF_NAME_MAX)
        len = VM_DEF_NAME_MAX;
    char *out = vs_malloc(len + 2);
    if (!out)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        out[n++] = name_char_ok(name[i]) ? name[i] : '-';
    out[n] = '\0';
    if (n == 0 || out[0] == '.' || out[0] == '-')
        out[0] = 'v';
    if (n == 0)
        out[1] = '\0';
    return out;
}

int defs_parse_uint(const char *text, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!*text)
        return -EINVAL;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        if (v > (UINT64_MAX - 9) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

enum vm_disk_bus defs_bus_from_target(const char *target)
{
    if (!target)
        return VM_DISK_BUS_VIRTIO;
    if (strncmp(target, "hd", 2) == 0)
        return VM_DISK_BUS_IDE;
    if (strncmp(target, "sd", 2) == 0)
        return VM_DISK_BUS_SCSI;
    return VM_DISK_BUS_VIRTIO;
}

static bool parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(text, yes[i]) == 0)
            return *out = true, true;
        if (strcasecmp(text, no[i]) == 0)
            return *out = false, true;
    }
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int vm_rate_parse(const char *text, unsigned *mbit)
{
    /* NUMBER[.FRACTION][UNIT]: k/K, M, G with b, bit, bps-style bits or B for bytes, an optional
     * "/s"; no unit = Mbit/s. Rounded up to whole Mbit/s (the tap's shaper granularity). */
    const char *p = text;
    uint64_t whole = 0, frac = 0, frac_div = 1;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (uint64_t)(*p - '0');
        if (whole > 1000000000ULL)
            return -ERANGE;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++)
            if (frac_div < 1000000) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                frac_div *= 10;
            }
    }
    uint64_t scale = 1000000; /* bits per second of one unit */
    bool bytes = false;
    if (*p == 'k' || *p == 'K')
        scale = 1000, p++;
    else if (*p == 'm' || *p == 'M')
        scale = 1000000, p++;
    else if (*p == 'g' || *p == 'G')
        scale = 1000000000, p++;
    if (*p == 'B')
        bytes = true, p++;
    else if (strncmp(p, "bit", 3) == 0)
        p += 3;
    else if (*p == 'b')
        p++;
    if (strcmp(p, "/s") == 0 || strcmp(p, "ps") == 0)
        p += 2;
    if (*p)
        return -EINVAL;
    /* bits per second, exact in integers: (whole + frac / frac_div) * scale * (bytes ? 8 : 1) */
    uint64_t mul = scale * (bytes ? 8 : 1);
    uint64_t bps = whole * mul + (frac * mul + frac_div - 1) / frac_div;
    if (bps == 0)
        return -EINVAL;
    uint64_t m = (bps + 999999) / 1000000;
    if (m > 100000)
        return -ERANGE;
    *mbit = (unsigned)m;
    return 0;
}

int vm_mac_parse(const char *text, char out[18])
{
    unsigned char b[6];
    const char *p = text;
    for (int i = 0; i < 6; i++) {
        int hi = hexval(p[0]), lo = hi < 0 ? -1 : hexval(p[1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        b[i] = (unsigned char)(hi << 4 | lo);
        p += 2;
        if (i < 5) {
            if (*p != ':' && *p != '-')
                return -EINVAL;
            p++;
        }
    }
    if (*p)
        return -EINVAL;
    if (b[0] & 1)
        return -EINVAL; /* multicast: no NIC may have it */
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
    return 0;
}

static void random_bytes(unsigned char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom(buf + done, len - done, 0);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    if (done < len) { /* no getrandom: good enough for identifiers, never for secrets */
        uint64_t x = vs_now_ns() ^ ((uint64_t)getpid() << 32);
        for (; done < len; done++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[done] = (unsigned char)(x >> 56);
        }
    }
}

void vm_mac_generate(char out[18])
{
    unsigned char b[3];
    random_bytes(b, 3);
    snprintf(out, 18, "52:54:00:%02x:%02x:%02x", b[0], b[1], b[2]);
}

void vm_uuid_generate(char out[37])
{
    unsigned char b[16];
    random_bytes(b, 16);
    b[6] = (b[6] & 0x0f) | 0x40; /* version 4 */
    b[8] = (b[8] & 0x3f) | 0x80; /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

int vm_uuid_parse(const char *text, char out[37])
{
    char hex[33];
    size_t n = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '-' || *p == ' ')
            continue;
        if (hexval(*p) < 0 || n == 32)
            return -EINVAL;
        hex[n++] = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
    }
    if (n != 32)
        return -EINVAL;
    hex[32] = '\0';
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
    return 0;
}

/* ---- life cycle ------------------------------------------------------------------------------ */

struct vm_def *vm_def_new(void)
{
    struct vm_def *def = vs_calloc(1, sizeof(*def));
    if (!def)
        return NULL;
    def->vcpus = 1;
    def->boot_from = VM_BOOT_FROM_DISK;
    def->console = VM_CONSOLE_PTY;
    def->on_poweroff = VM_ACTION_DESTROY;
    def->on_reboot = VM_ACTION_RESTART;
    def->on_crash = VM_ACTION_DESTROY;
    def->autostart = VM_AUTOSTART_NEVER;
    def->cpu_weight = 256;
    return def;
}

int vm_cpu_list_parse(const char *text, uint64_t set[VM_CPU_LIST_MAX / 64], char **canonical)
{
    memset(set, 0, VM_CPU_LIST_MAX / 8);
    if (canonical)
        *canonical = NULL;
    const char *p = text;
    bool any = false;
    while (*p) {
        char *end;
        if (*p < '0' || *p > '9')
            return vs_error(-EINVAL, "'%s': expected CPU numbers and ranges like 0-3,6", text);
        unsigned long lo = strtoul(p, &end, 10), hi = lo;
        if (*end == '-') {
            p = end + 1;
            if (*p < '0' || *p > '9')
                return vs_error(-EINVAL, "'%s': a range needs its last CPU", text);
            hi = strtoul(p, &end, 10);
        }
        if (lo >= VM_CPU_LIST_MAX || hi >= VM_CPU_LIST_MAX)
            return vs_error(-EINVAL, "'%s': CPU numbers go up to %d", text, VM_CPU_LIST_MAX - 1);
        if (hi < lo)
            return vs_error(-EINVAL, "'%s': range %lu-%lu runs backwards", text, lo, hi);
        for (unsigned long c = lo; c <= hi; c++)
            set[c / 64] |= 1ull << (c % 64);
        any = true;
        p = end;
        if (*p == ',' && p[1])
            p++;
        else if (*p)
            return vs_error(-EINVAL, "'%s': expected CPU numbers and ranges like 0-3,6", text);
    }
    if (!any)
        return vs_error(-EINVAL, "empty CPU list");
    if (!canonical)
        return 0;
    char buf[VM_CPU_LIST_MAX * 5];
    size_t n = 0;
    for (unsigned c = 0; c < VM_CPU_LIST_MAX;) {
        if (!(set[c / 64] & (1ull << (c % 64)))) {
            c++;
            continue;
        }
        unsigned e = c;
        while (e + 1 < VM_CPU_LIST_MAX && (set[(e + 1) / 64] & (1ull << ((e + 1) % 64))))
            e++;
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, n ? ",%u" : "%u", c);
        if (e > c)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "-%u", e);
        c = e + 1;
    }
    *canonical = vs_strdup(buf);
    return *canonical ? 0 : -ENOMEM;
}

int vm_def_set_cpu_affinity(struct vm_def *def, const char *list)
{
    uint64_t set[VM_CPU_LIST_MAX / 64];
    char *canonical;
    int rc = vm_cpu_list_parse(list, set, &canonical);
    if (rc < 0)
        return rc;
    free(def->cpu_affinity);
    def->cpu_affinity = canonical;
    return 0;
}

void vm_def_free(struct vm_def *def)
{
    if (!def)
        return;
    for (size_t i = 0; i < def->disk_count; i++) {
        free(def->disks[i].file);
        free(def->disks[i].format);
        free(def->disks[i].target);
    }
    for (size_t i = 0; i < def->nic_count; i++) {
        free(def->nics[i].network);
        free(def->nics[i].bridge);
    }
    free(def->disks);
    free(def->nics);
    free(def->source);
    free(def->name);
    free(def->kernel);
    free(def->initrd);
    free(def->cmdline);
    free(def->boot_entry);
    free(def->cpu_affinity);
    free(def->console_path);
    free(def);
}

int vm_def_set_string(char **field, const char *value)
{
    char *copy = NULL;
    if (value && !(copy = vs_strdup(value)))
        return -ENOMEM;
    free(*field);
    *field = copy;
    return 0;
}

int vm_def_add_disk(struct vm_def *def, struct vm_disk **out)
{
    struct vm_disk *d = realloc(def->disks, (def->disk_count + 1) * sizeof(*d));
    if (!d)
        return vs_error(-ENOMEM, "out of memory");
    def->disks = d;
    d = &def->disks[def->disk_count++];
    memset(d, 0, sizeof(*d));
    *out = d;
    return 0;
}

int vm_def_add_nic(struct vm_def *def, struct vm_nic **out)
{
    struct vm_nic *n = realloc(def->nics, (def->nic_count + 1) * sizeof(*n));
    if (!n)
        return vs_error(-ENOMEM, "out of memory");
    def->nics = n;
    n = &def->nics[def->nic_count++];
    memset(n, 0, sizeof(*n));
    *out = n;
    return 0;
}

/* ---- parser ---------------------------------------------------------------------------------- */

enum section { SECTION_TOP, SECTION_DISK, SECTION_NIC, SECTION_BOOT };

enum key {
    KEY_NAME,
    KEY_UUID,
    KEY_VCPUS,
    KEY_MEMORY,
    KEY_CONSOLE,
    KEY_ON_POWEROFF,
    KEY_ON_REBOOT,
    KEY_ON_CRASH,
    KEY_AUTOSTART,
    KEY_AUTOSTART_DELAY,
    KEY_CPU_WEIGHT,
    KEY_CPU_CAP,
    KEY_CPU_AFFINITY,
    KEY_TOP_COUNT,
    KEY_FILE = KEY_TOP_COUNT,
    KEY_FORMAT,
    KEY_TARGET,
    KEY_BUS,
    KEY_MEDIA,
    KEY_READONLY,
    KEY_UNDO,
    KEY_IOPS,
    KEY_BPS,
    KEY_NETWORK,
    KEY_BRIDGE,
    KEY_MAC,
    KEY_MODEL,
    KEY_RATE,
    KEY_KERNEL,
    KEY_INITRD,
    KEY_CMDLINE,
    KEY_FROM,
    KEY_ENTRY,
    KEY_COUNT
};

static const struct {
    const char *name;
    enum section section;
} key_table[KEY_COUNT] = {
    [KEY_NAME] = {"name", SECTION_TOP},
    [KEY_UUID] = {"uuid", SECTION_TOP},
    [KEY_VCPUS] = {"vcpus", SECTION_TOP},
    [KEY_MEMORY] = {"memory", SECTION_TOP},
    [KEY_CONSOLE] = {"console", SECTION_TOP},
    [KEY_ON_POWEROFF] = {"on_poweroff", SECTION_TOP},
    [KEY_ON_REBOOT] = {"on_reboot", SECTION_TOP},
    [KEY_ON_CRASH] = {"on_crash", SECTION_TOP},
    [KEY_AUTOSTART] = {"autostart", SECTION_TOP},
    [KEY_AUTOSTART_DELAY] = {"autostart_delay", SECTION_TOP},
    [KEY_CPU_WEIGHT] = {"cpu_weight", SECTION_TOP},
    [KEY_CPU_CAP] = {"cpu_cap", SECTION_TOP},
    [KEY_CPU_AFFINITY] = {"cpu_affinity", SECTION_TOP},
    [KEY_FILE] = {"file", SECTION_DISK},
    [KEY_FORMAT] = {"format", SECTION_DISK},
    [KEY_TARGET] = {"target", SECTION_DISK},
    [KEY_BUS] = {"bus", SECTION_DISK},
    [KEY_MEDIA] = {"media", SECTION_DISK},
    [KEY_READONLY] = {"readonly", SECTION_DISK},
    [KEY_UNDO] = {"undo", SECTION_DISK},
    [KEY_IOPS] = {"iops", SECTION_DISK},
    [KEY_BPS] = {"bps", SECTION_DISK},
    [KEY_NETWORK] = {"network", SECTION_NIC},
    [KEY_BRIDGE] = {"bridge", SECTION_NIC},
    [KEY_MAC] = {"mac", SECTION_NIC},
    [KEY_MODEL] = {"model", SECTION_NIC},
    [KEY_RATE] = {"rate", SECTION_NIC},
    [KEY_KERNEL] = {"kernel", SECTION_BOOT},
    [KEY_INITRD] = {"initrd", SECTION_BOOT},
    [KEY_CMDLINE] = {"cmdline", SECTION_BOOT},
    [KEY_FROM] = {"from", SECTION_BOOT},
    [KEY_ENTRY] = {"entry", SECTION_BOOT},
};

static const char *const section_names[4] = {"top level", "disk", "nic", "boot"};

struct parser {
    struct vm_def *def;
    const char *source;
    enum section section;
    int section_line;
    int seen[KEY_COUNT]; /* line of the key in its scope (top level: whole file) */
    bool boot_seen;
};

static int enum_value(struct parser *p, int line, const char *key, const char *const *names,
                      size_t count, const char *value, int *out)
{
    int v = defs_lookup(names, count, value);
    if (v < 0) {
        char choices[128];
        return defs_error(p->source, line, key, "'%s' is not one of %s", value,
                          defs_choices(names, count, choices, sizeof(choices)));
    }
    *out = v;
    return 0;
}

static int uint_value(struct parser *p, int line, const char *key, const char *value, uint64_t min,
                      uint64_t max, unsigned *out)
{
    uint64_t v = 0;
    int rc = defs_parse_uint(value, UINT64_MAX, &v);
    if (rc == -EINVAL)
        return defs_error(p->source, line, key, "'%s' is not a number", value);
    if (rc < 0 || v < min || v > max)
        return defs_error(p->source, line, key, "%s is out of range (%llu to %llu)", value,
                          (unsigned long long)min, (unsigned long long)max);
    *out = (unsigned)v;
    return 0;
}

static int set_key(struct parser *p, enum key key, const char *value, int line)
{
    struct vm_def *def = p->def;
    const char *kname = key_table[key].name;
    struct vm_disk *disk = def->disk_count ? &def->disks[def->disk_count - 1] : NULL;
    struct vm_nic *nic = def->nic_count ? &def->nics[def->nic_count - 1] : NULL;
    int e = 0, rc = 0;
    bool b;
    uint64_t size;

    switch (key) {
    case KEY_NAME:
        if (!defs_name_valid(value))
            return defs_error(p->source, line, kname,
                              "'%s' is not a valid name (1 to %d of A-Z a-z 0-9 . _ -, not "
                              "starting with . or -)",
                              value, VM_DEF_NAME_MAX);
        def->name_line = line;
        return vm_def_set_string(&def->name, value);
    case KEY_UUID:
        if (vm_uuid_parse(value, def->uuid) < 0)
            return defs_error(p->source, line, kname, "'%s' is not a UUID", value);
        def->uuid_line = line;
        return 0;
    case KEY_VCPUS:
        def->vcpus_line = line;
        return uint_value(p, line, kname, value, 1, VM_DEF_MAX_VCPUS, &def->vcpus);
    case KEY_MEMORY:
        if (vs_parse_size(value, &size) < 0)
            return defs_error(p->source, line, kname, "'%s' is not a size", value);
        if (size < VM_DEF_MIN_MEMORY || size > VM_DEF_MAX_MEMORY)
            return defs_error(p->source, line, kname, "%s is out of range (1M to 16T)", value);
        if (size % (1 << 20))
            return defs_error(p->source, line, kname, "%s is not a whole number of MiB", value);
        def->memory = size;
        def->memory_line = line;
        return 0;
    case KEY_CONSOLE:
        free(def->console_path);
        def->console_path = NULL;
        if (strcmp(value, "pty") == 0) {
            def->console = VM_CONSOLE_PTY;
        } else if (strcmp(value, "none") == 0) {
            def->console = VM_CONSOLE_NONE;
        } else if (strncmp(value, "file:", 5) == 0 && value[5]) {
            def->console = VM_CONSOLE_FILE;
            rc = vm_def_set_string(&def->console_path, value + 5);
        } else if (strncmp(value, "unix:", 5) == 0 && value[5]) {
            def->console = VM_CONSOLE_UNIX;
            rc = vm_def_set_string(&def->console_path, value + 5);
        } else {
            return defs_error(p->source, line, kname,
                              "'%s' is not one of pty, none, file:PATH or unix:PATH", value);
        }
        return rc;
    case KEY_ON_POWEROFF:
    case KEY_ON_REBOOT:
    case KEY_ON_CRASH:
        if ((rc = enum_value(p, line, kname, defs_action_names, 3, value, &e)) < 0)
            return rc;
        *(key == KEY_ON_POWEROFF ? &def->on_poweroff
          : key == KEY_ON_REBOOT ? &def->on_reboot
                                 : &def->on_crash) = (enum vm_action)e;
        return 0;
    case KEY_AUTOSTART:
        if ((rc = enum_value(p, line, kname, defs_autostart_names, 3, value, &e)) < 0)
            return rc;
        def->autostart = (enum vm_autostart)e;
        return 0;
    case KEY_AUTOSTART_DELAY:
        return uint_value(p, line, kname, value, 0, 86400, &def->autostart_delay);
    case KEY_CPU_WEIGHT:
        return uint_value(p, line, kname, value, 1, 65535, &def->cpu_weight);
    case KEY_CPU_CAP:
        def->cpu_cap_line = line;
        return uint_value(p, line, kname, value, 0, 100 * VM_DEF_MAX_VCPUS, &def->cpu_cap);
    case KEY_CPU_AFFINITY:
        if (vm_def_set_cpu_affinity(def, value) < 0)
            return defs_error(p->source, line, kname, "%s", vs_error_message());
        return 0;
    case KEY_FILE:
        if (!*value)
            return defs_error(p->source, line, kname, "empty file name");
        disk->file_line = line;
        return vm_def_set_string(&disk->file, value);
    case KEY_FORMAT:
        if ((rc = enum_value(p, line, kname, defs_format_names, 6, value, &e)) < 0)
            return rc;
        return vm_def_set_string(&disk->format, value);
    case KEY_TARGET:
        for (const char *c = value; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')))
                return defs_error(p->source, line, kname,
                                  "'%s' is not a device name like vda or hdc", value);
        if (!*value || value[0] < 'a' || strlen(value) > 16)
            return defs_error(p->source, line, kname, "'%s' is not a device name like vda or hdc",
                              value);
        disk->target_line = line;
        return vm_def_set_string(&disk->target, value);
    case KEY_BUS:
        if ((rc = enum_value(p, line, kname, defs_bus_names, 4, value, &e)) < 0)
            return rc;
        disk->bus = (enum vm_disk_bus)e;
        return 0;
    case KEY_MEDIA:
        if ((rc = enum_value(p, line, kname, media_names, 2, value, &e)) < 0)
            return rc;
        disk->media = (enum vm_disk_media)e;
        return 0;
    case KEY_READONLY:
    case KEY_UNDO:
        if (!parse_bool(value, &b))
            return defs_error(p->source, line, kname, "'%s' is not yes or no", value);
        *(key == KEY_READONLY ? &disk->readonly : &disk->undo) = b;
        return 0;
    case KEY_IOPS: {
        unsigned n = 0;
        if ((rc = uint_value(p, line, kname, value, 1, 10000000, &n)) == 0)
            disk->iops = n;
        return rc;
    }
    case KEY_BPS: { /* a size per second: 50M, 50M/s, 1G */
        char text[64];
        uint64_t n;
        snprintf(text, sizeof(text), "%s", value);
        size_t len = strlen(text);
        if (len > 2 && !strcmp(text + len - 2, "/s"))
            text[len - 2] = 0;
        if (vs_parse_size(text, &n) < 0 || n < 4096)
            return defs_error(p->source, line, kname,
                              "'%s' is not a rate in bytes per second (at least 4K, like 50M)",
                              value);
        vs_error_clear();
        disk->bps = n;
        return 0;
    }
    case KEY_NETWORK:
    case KEY_BRIDGE:
        if (!*value)
            return defs_error(p->source, line, kname, "empty name");
        return vm_def_set_string(key == KEY_NETWORK ? &nic->network : &nic->bridge, value);
    case KEY_MAC:
        if (vm_mac_parse(value, nic->mac) < 0)
            return defs_error(p->source, line, kname,
                              "'%s' is not a unicast MAC address like 52:54:00:12:34:56", value);
        nic->mac_line = line;
        return 0;
    case KEY_MODEL:
        if ((rc = enum_value(p, line, kname, defs_model_names, 3, value, &e)) < 0)
            return rc;
        nic->model = (enum vm_nic_model)e;
        return 0;
    case KEY_RATE: {
        int r = vm_rate_parse(value, &nic->rate_mbit);
        if (r < 0)
            return defs_error(p->source, line, kname,
                              "'%s' is not a rate like 8 (Mbit/s), 8Mb/s, 500Kb/s or 1Gb/s "
                              "(at most 100 Gbit/s)",
                              value);
        nic->rate_line = line;
        return 0;
    }
    case KEY_KERNEL:
        def->kernel_line = line;
        return vm_def_set_string(&def->kernel, value);
    case KEY_INITRD:
        return vm_def_set_string(&def->initrd, value);
    case KEY_CMDLINE:
        return vm_def_set_string(&def->cmdline, value);
    case KEY_FROM:
        if ((rc = enum_value(p, line, kname, from_names, 3, value, &e)) < 0)
            return rc;
        def->boot_from = (enum vm_boot_from)e;
        def->from_line = line;
        return 0;
    case KEY_ENTRY:
        if (!*value)
            return defs_error(p->source, line, kname, "empty entry name");
        return vm_def_set_string(&def->boot_entry, value);
    default:
        return defs_error(p->source, line, kname, "internal: unhandled key");
    }
}

/* Unquote a value: "..." with \" and \\ escapes; unquoted values end at " #". */
static int parse_value(struct parser *p, int line, const char *key, const char *s, size_t len,
                       char **out)
{
    while (len && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    if (len && *s == '"') {
        char *v = vs_malloc(len);
        if (!v)
            return -ENOMEM;
        size_t n = 0, i = 1;
        for (; i < len && s[i] != '"'; i++) {
            if (s[i] == '\\' && i + 1 < len && (s[i + 1] == '"' || s[i + 1] == '\\'))
                i++;
            v[n++] = s[i];
        }
        v[n] = '\0';
        if (i >= len) {
            free(v);
            return defs_error(p->source, line, key, "unterminated quoted value");
        }
        for (i++; i < len && (s[i] == ' ' || s[i] == '\t'); i++)
            ;
        if (i < len && s[i] != '#') {
            free(v);
            return defs_error(p->source, line, key, "text after the closing quote");
        }
        *out = v;
        return 0;
    }
    size_t end = 0;
    for (; end < len; end++)
        if (s[end] == '#' && (end == 0 || s[end - 1] == ' ' || s[end - 1] == '\t'))
            break;
    *out = defs_strndup_trim(s, end);
    return *out ? 0 : -ENOMEM;
}

static int parse_line(struct parser *p, const char *s, size_t len, int line)
{
    while (len && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r'))
        len--;
    if (len == 0 || *s == '#')
        return 0;

    if (*s == '[') {
        size_t close = 1;
        while (close < len && s[close] != ']')
            close++;
        size_t rest = close + 1;
        while (rest < len && (s[rest] == ' ' || s[rest] == '\t'))
            rest++;
        if (close >= len || (rest < len && s[rest] != '#'))
            return defs_error(p->source, line, NULL, "expected a section like [disk]");
        char name[16];
        size_t nlen = close - 1;
        if (nlen >= sizeof(name))
            nlen = sizeof(name) - 1;
        memcpy(name, s + 1, nlen);
        name[nlen] = '\0';
        int sec = -1;
        for (int i = 1; i < 4; i++)
            if (strcmp(name, section_names[i]) == 0)
                sec = i;
        if (sec < 0)
            return defs_error(p->source, line, NULL,
                              "unknown section [%s] (sections: [disk], [nic], [boot])", name);
        if (sec == SECTION_BOOT && p->boot_seen)
            return defs_error(p->source, line, NULL, "[boot] given twice");
        p->section = (enum section)sec;
        p->section_line = line;
        for (int k = KEY_TOP_COUNT; k < KEY_COUNT; k++)
            p->seen[k] = 0;
        int rc = 0;
        if (sec == SECTION_DISK) {
            struct vm_disk *d;
            if ((rc = vm_def_add_disk(p->def, &d)) == 0)
                d->line = line;
        } else if (sec == SECTION_NIC) {
            struct vm_nic *n;
            if ((rc = vm_def_add_nic(p->def, &n)) == 0)
                n->line = line;
        } else {
            p->boot_seen = true;
        }
        return rc;
    }

    const char *eq = memchr(s, '=', len);
    if (!eq)
        return defs_error(p->source, line, NULL, "expected 'key = value'");
    size_t klen = (size_t)(eq - s);
    while (klen && (s[klen - 1] == ' ' || s[klen - 1] == '\t'))
        klen--;
    char key[32];
    if (klen == 0 || klen >= sizeof(key))
        return defs_error(p->source, line, NULL, "expected 'key = value'");
    memcpy(key, s, klen);
    key[klen] = '\0';

    int found = -1;
    for (int k = 0; k < KEY_COUNT; k++)
        if (strcmp(key_table[k].name, key) == 0 &&
            (key_table[k].section == p->section || key_table[k].section == SECTION_TOP))
            found = k;
    if (found < 0) {
        for (int k = 0; k < KEY_COUNT; k++)
            if (strcmp(key_table[k].name, key) == 0)
                return defs_error(p->source, line, key, "belongs in a [%s] section",
                                  section_names[key_table[k].section]);
        return defs_error(p->source, line, key, "unknown key");
    }
    if (p->seen[found])
        return defs_error(p->source, line, key, "given twice (first on line %d)", p->seen[found]);
    p->seen[found] = line;

    char *value = NULL;
    int rc = parse_value(p, line, key, eq + 1, len - (size_t)(eq + 1 - s), &value);
    if (rc < 0)
        return rc;
    rc = set_key(p, (enum key)found, value, line);
    free(value);
    return rc;
}

int vm_def_parse(const char *text, size_t len, const char *source, struct vm_def **out)
{
    *out = NULL;
    struct vm_def *def = vm_def_new();
    if (!def)
        return -ENOMEM;
    if (source && !(def->source = vs_strdup(source))) {
        vm_def_free(def);
        return -ENOMEM;
    }
    struct parser p = {.def = def, .source = source, .section = SECTION_TOP};
    int rc = 0, line = 1;
    size_t pos = 0;
    while (pos < len && rc == 0) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (memchr(text + pos, '\0', end - pos))
            rc = defs_error(source, line, NULL, "NUL byte in text");
        else
            rc = parse_line(&p, text + pos, end - pos, line);
        pos = end + 1;
        line++;
    }
    if (rc == 0) {
        for (size_t i = 0; i < def->disk_count && rc == 0; i++)
            if (!def->disks[i].file)
                rc = defs_error(source, def->disks[i].line, "disk", "'file' is required");
        if (rc == 0 && def->kernel && !def->from_line)
            def->boot_from = VM_BOOT_FROM_KERNEL;
        if (rc == 0)
            rc = vm_def_validate(def);
    }
    if (rc < 0) {
        vm_def_free(def);
        return rc;
    }
    *out = def;
    return 0;
}

int vm_def_parse_file(const char *path, struct vm_def **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_error_errno(-errno, "%s", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
        close(fd);
        return vs_error(-EINVAL, "%s: not a regular file of at most 64 MiB", path);
    }
    char *buf = vs_malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    int rc = vs_pread_full(fd, buf, (size_t)st.st_size, 0);
    close(fd);
    if (rc == 0)
        rc = vm_def_parse(buf, (size_t)st.st_size, path, out);
    else
        vs_error_errno(rc, "%s", path);
    free(buf);
    return rc;
}

/* ---- validation ------------------------------------------------------------------------------ */

/* Text values are single printable lines: a control character (an imported xl.cfg or .vmx can
 * carry any byte) could not be written back to the one-value-per-line format. Tabs are fine. */
static int check_text(const char *src, int line, const char *key, const char *value)
{
    if (!value)
        return 0;
    for (const unsigned char *c = (const unsigned char *)value; *c; c++)
        if ((*c < 0x20 && *c != '\t') || *c == 0x7f)
            return defs_error(src, line, key, "control character 0x%02x in the value", *c);
    return 0;
}

int vm_def_validate(struct vm_def *def)
{
    const char *src = def->source;
    int text_rc = check_text(src, def->name_line, "name", def->name);
    if (!text_rc)
        text_rc = check_text(src, def->kernel_line, "kernel", def->kernel);
    if (!text_rc)
        text_rc = check_text(src, def->from_line, "initrd", def->initrd);
    if (!text_rc)
        text_rc = check_text(src, def->from_line, "cmdline", def->cmdline);
    if (!text_rc)
        text_rc = check_text(src, def->from_line, "entry", def->boot_entry);
    if (!text_rc)
        text_rc = check_text(src, 0, "console", def->console_path);
    for (size_t i = 0; !text_rc && i < def->disk_count; i++) {
        const struct vm_disk *d = &def->disks[i];
        text_rc = check_text(src, d->file_line ? d->file_line : d->line, "file", d->file);
        if (!text_rc)
            text_rc = check_text(src, d->line, "format", d->format);
        if (!text_rc)
            text_rc =
                check_text(src, d->target_line ? d->target_line : d->line, "target", d->target);
    }
    for (size_t i = 0; !text_rc && i < def->nic_count; i++) {
        text_rc = check_text(src, def->nics[i].line, "network", def->nics[i].network);
        if (!text_rc)
            text_rc = check_text(src, def->nics[i].line, "bridge", def->nics[i].bridge);
    }
    if (text_rc)
        return text_rc;
    if (!def->name)
        return defs_error(src, 0, "name", "required key missing (add 'name = ...')");
    if (!defs_name_valid(def->name))
        return defs_error(src, def->name_line, "name", "'%s' is not a valid name", def->name);
    if (!def->memory)
        return defs_error(src, 0, "memory", "required key missing (add 'memory = 1G')");
    if (def->memory < VM_DEF_MIN_MEMORY || def->memory > VM_DEF_MAX_MEMORY ||
        def->memory % (1 << 20))
        return defs_error(src, def->memory_line, "memory",
                          "%llu bytes is not a whole number of MiB from 1M to 16T",
                          (unsigned long long)def->memory);
    if (def->vcpus < 1 || def->vcpus > VM_DEF_MAX_VCPUS)
        return defs_error(src, def->vcpus_line, "vcpus", "%u is out of range (1 to %d)", def->vcpus,
                          VM_DEF_MAX_VCPUS);
    if (def->cpu_cap > 100 * def->vcpus)
        return defs_error(src, def->cpu_cap_line, "cpu_cap",
                          "%u%% is more than %u vCPUs can use (%u%%)", def->cpu_cap, def->vcpus,
                          100 * def->vcpus);
    if (def->boot_from == VM_BOOT_FROM_KERNEL && !def->kernel)
        return defs_error(src, def->from_line, "kernel", "required when booting from a kernel");
    if (def->boot_from != VM_BOOT_FROM_KERNEL && def->kernel)
        return defs_error(src, def->kernel_line, "kernel", "not used when from = %s",
                          from_names[def->boot_from]);
    if (def->boot_from != VM_BOOT_FROM_KERNEL && def->initrd)
        return defs_error(src, def->from_line, "initrd",
                          "needs a kernel (from = disk takes the "
                          "boot entry's)");
    if (def->boot_from == VM_BOOT_FROM_CDROM && def->cmdline)
        return defs_error(src, def->from_line, "cmdline", "not used when from = cdrom");
    if (def->boot_from != VM_BOOT_FROM_DISK && def->boot_entry)
        return defs_error(src, def->from_line, "entry", "only for from = disk");
    if ((def->console == VM_CONSOLE_FILE || def->console == VM_CONSOLE_UNIX) && !def->console_path)
        return defs_error(src, 0, "console", "a file or unix console needs a path");

    bool has_cdrom = false;
    for (size_t i = 0; i < def->disk_count; i++) {
        struct vm_disk *d = &def->disks[i];
        if (!d->file || !*d->file)
            return defs_error(src, d->line, "disk", "'file' is required");
        if (d->media == VM_DISK_MEDIA_CDROM) {
            has_cdrom = true;
            d->readonly = true;
        }
        if (d->undo && d->readonly)
            return defs_error(src, d->line, "undo", "a read-only disk has nothing to undo");
        if (d->target)
            for (size_t j = 0; j < i; j++)
                if (def->disks[j].target && strcmp(def->disks[j].target, d->target) == 0)
                    return defs_error(src, d->target_line, "target",
                                      "'%s' is already used by the disk on line %d", d->target,
                                      def->disks[j].line);
    }
    if (def->boot_from == VM_BOOT_FROM_CDROM && !has_cdrom)
        return defs_error(src, def->from_line, "from", "cdrom, but no disk has media = cdrom");

    for (size_t i = 0; i < def->nic_count; i++) {
        struct vm_nic *n = &def->nics[i];
        if (n->network && n->bridge)
            return defs_error(src, n->line, "nic", "give either network or bridge, not both");
        if (!n->network && !n->bridge && vm_def_set_string(&n->network, "default") < 0)
            return -ENOMEM;
        if (!n->mac[0])
            continue;
        for (size_t j = 0; j < i; j++)
            if (strcmp(def->nics[j].mac, n->mac) == 0)
                return defs_error(src, n->mac_line, "mac",
                                  "%s is already the MAC of the nic on line %d", n->mac,
                                  def->nics[j].line);
    }
    /* generated identities last, so they never collide with the ones given */
    for (size_t i = 0; i < def->nic_count; i++) {
        struct vm_nic *n = &def->nics[i];
        while (!n->mac[0]) {
            vm_mac_generate(n->mac);
            for (size_t j = 0; j < def->nic_count; j++)
                if (j != i && strcmp(def->nics[j].mac, n->mac) == 0)
                    n->mac[0] = '\0';
        }
    }
    if (!def->uuid[0])
        vm_uuid_generate(def->uuid);
    return 0;
}

int vm_def_check_disks(const struct vm_def *def)
{
    for (size_t i = 0; i < def->disk_count; i++) {
        const struct vm_disk *d = &def->disks[i];
        struct stat st;
        if (stat(d->file, &st) < 0)
            return vs_error_errno(-errno, "%s%s%s%d: file: '%s'", def->source ? def->source : "",
                                  def->source ? ": " : "", d->file_line ? "line " : "disk ",
                                  d->file_line ? d->file_line : (int)i + 1, d->file);
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
            return defs_error(def->source, d->file_line, "file",
                              "'%s' is neither a file nor a block device", d->file);
    }
    return 0;
}

/* ---- printing -------------------------------------------------------------------------------- */

static void print_value(FILE *f, const char *key, const char *value)
{
    bool quote = !*value || value[0] == '"' || value[0] == ' ' || value[0] == '#' ||
                 value[strlen(value) - 1] == ' ' || strstr(value, " #") || strstr(value, "\t#") ||
                 strchr(value, '\n') || strchr(value, '\t');
    if (!quote) {
        fprintf(f, "%s = %s\n", key, value);
        return;
    }
    fprintf(f, "%s = \"", key);
    for (const char *c = value; *c; c++) {
        if (*c == '"' || *c == '\\')
            fputc('\\', f);
        fputc(*c, f);
    }
    fputs("\"\n", f);
}

static void print_size(FILE *f, const char *key, uint64_t bytes)
{
    static const char units[] = "KMGTPE";
    int u = -1;
    while (u < 5 && bytes && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    if (u < 0)
        fprintf(f, "%s = %llu\n", key, (unsigned long long)bytes);
    else
        fprintf(f, "%s = %llu%c\n", key, (unsigned long long)bytes, units[u]);
}

char *vm_def_print(const struct vm_def *def)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    print_value(f, "name", def->name ? def->name : "");
    if (def->uuid[0])
        fprintf(f, "uuid = %s\n", def->uuid);
    fprintf(f, "vcpus = %u\n", def->vcpus);
    print_size(f, "memory", def->memory);
    if (def->console == VM_CONSOLE_FILE || def->console == VM_CONSOLE_UNIX) {
        char *v = vs_asprintf("%s:%s", def->console == VM_CONSOLE_FILE ? "file" : "unix",
                              def->console_path ? def->console_path : "");
        if (v)
            print_value(f, "console", v);
        free(v);
    } else {
        fprintf(f, "console = %s\n", def->console == VM_CONSOLE_PTY ? "pty" : "none");
    }
    fprintf(f, "on_poweroff = %s\n", vm_action_name(def->on_poweroff));
    fprintf(f, "on_reboot = %s\n", vm_action_name(def->on_reboot));
    fprintf(f, "on_crash = %s\n", vm_action_name(def->on_crash));
    fprintf(f, "autostart = %s\n", vm_autostart_name(def->autostart));
    fprintf(f, "autostart_delay = %u\n", def->autostart_delay);
    fprintf(f, "cpu_weight = %u\n", def->cpu_weight);
    fprintf(f, "cpu_cap = %u\n", def->cpu_cap);
    if (def->cpu_affinity)
        fprintf(f, "cpu_affinity = %s\n", def->cpu_affinity);

    fputs("\n[boot]\n", f);
    if (def->boot_from == VM_BOOT_FROM_KERNEL) {
        print_value(f, "kernel", def->kernel ? def->kernel : "");
        if (def->initrd)
            print_value(f, "initrd", def->initrd);
        if (def->cmdline)
            print_value(f, "cmdline", def->cmdline);
    } else {
        fprintf(f, "from = %s\n", from_names[def->boot_from]);
        if (def->boot_entry)
            print_value(f, "entry", def->boot_entry);
        if (def->cmdline)
            print_value(f, "cmdline", def->cmdline);
    }
    for (size_t i = 0; i < def->disk_count; i++) {
        const struct vm_disk *d = &def->disks[i];
        fputs("\n[disk]\n", f);
        print_value(f, "file", d->file ? d->file : "");
        if (d->format)
            fprintf(f, "format = %s\n", d->format);
        if (d->target)
            fprintf(f, "target = %s\n", d->target);
        fprintf(f, "bus = %s\n", vm_disk_bus_name(d->bus));
        if (d->media == VM_DISK_MEDIA_CDROM)
            fputs("media = cdrom\n", f);
        fprintf(f, "readonly = %s\n", d->readonly ? "yes" : "no");
        fprintf(f, "undo = %s\n", d->undo ? "yes" : "no");
        if (d->iops)
            fprintf(f, "iops = %llu\n", (unsigned long long)d->iops);
        if (d->bps)
            print_size(f, "bps", d->bps);
    }
    for (size_t i = 0; i < def->nic_count; i++) {
        const struct vm_nic *n = &def->nics[i];
        fputs("\n[nic]\n", f);
        if (n->bridge)
            print_value(f, "bridge", n->bridge);
        else
            print_value(f, "network", n->network ? n->network : "default");
        if (n->mac[0])
            fprintf(f, "mac = %s\n", n->mac);
        fprintf(f, "model = %s\n", vm_nic_model_name(n->model));
        if (n->rate_mbit)
            fprintf(f, "rate = %u\n", n->rate_mbit);
    }
    if (fclose(f) != 0 || !buf) {
        free(buf);
        vs_error(-ENOMEM, "out of memory");
        return NULL;
    }
    return buf;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool vm_def_equal(const struct vm_def *a, const struct vm_def *b)
{
    if (!str_eq(a->name, b->name) || strcmp(a->uuid, b->uuid) || a->vcpus != b->vcpus ||
        a->memory != b->memory || a->disk_count != b->disk_count || a->nic_count != b->nic_count ||
        a->boot_from != b->boot_from || !str_eq(a->kernel, b->kernel) ||
        !str_eq(a->initrd, b->initrd) || !str_eq(a->cmdline, b->cmdline) ||
        !str_eq(a->boot_entry, b->boot_entry) || a->console != b->console ||
        !str_eq(a->console_path, b->console_path) || a->on_poweroff != b->on_poweroff ||
        a->on_reboot != b->on_reboot || a->on_crash != b->on_crash ||
        a->autostart != b->autostart || a->autostart_delay != b->autostart_delay ||
        a->cpu_weight != b->cpu_weight || a->cpu_cap != b->cpu_cap ||
        !str_eq(a->cpu_affinity, b->cpu_affinity))
        return false;
    for (size_t i = 0; i < a->disk_count; i++) {
        const struct vm_disk *x = &a->disks[i], *y = &b->disks[i];
        if (!str_eq(x->file, y->file) || !str_eq(x->format, y->format) ||
            !str_eq(x->target, y->target) || x->bus != y->bus || x->media != y->media ||
            x->readonly != y->readonly || x->undo != y->undo || x->iops != y->iops ||
            x->bps != y->bps)
            return false;
    }
    for (size_t i = 0; i < a->nic_count; i++) {
        const struct vm_nic *x = &a->nics[i], *y = &b->nics[i];
        if (!str_eq(x->network, y->network) || !str_eq(x->bridge, y->bridge) ||
            strcmp(x->mac, y->mac) || x->model != y->model || x->rate_mbit != y->rate_mbit)
            return false;
    }
    return true;
}

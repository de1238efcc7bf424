/* immutools replica builder: LD_PRELOAD shim that makes mkfs tools reproducible and rootless.
 *
 * Why: mkfs.btrfs, mke2fs -d, mkfs.xfs and mtools take inode times from stat() of the staging
 * tree (ctime cannot be set from user space), stamp "now" into metadata, and draw random UUIDs
 * (btrfs device and chunk-tree UUIDs have no command-line option).  Running them with this shim
 * gives byte-identical output for the same input.  It also reports the owners listed in a map
 * file, so an unprivileged build can still give files uid/gid 0 or 500 (like fakeroot, but
 * read-only: the staging tree is never changed).
 *
 * Directory listings are served sorted by name (readdir order on the host filesystem is a hash
 * order that differs between two staging trees), so tools that copy in readdir order
 * (mkfs.btrfs --rootdir, mkfs.xfs, mtools) give the same inode numbers and entry order.
 *
 * Environment:
 *   IMMUTOOLS_SHIM_EPOCH  seconds; every clock read and every stat time returns this value
 *   IMMUTOOLS_SHIM_SEED   text; seeds the deterministic uuid_generate*() / getrandom() streams
 *   IMMUTOOLS_SHIM_OWNERS path of a file of "dev ino uid gid new_ino" lines (decimal): stat() of
 *                         that file reports these owners and inode number (mkfs.btrfs --rootdir
 *                         reuses source inode numbers, which differ between staging trees)
 *   IMMUTOOLS_SHIM_UNPRIVILEGED  when set: chown() and friends succeed without changing anything
 *                         (owners come from the map above), and FIFREEZE/FITHAW fail with
 *                         EOPNOTSUPP, so tools that manage a system root (`ostree admin deploy`)
 *                         work on a staging directory without root and never freeze the host's
 *                         filesystem when run as root.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <dlfcn.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

typedef unsigned char uuid_t_[16];

static int64_t shim_epoch(void) {
    const char *e = getenv("IMMUTOOLS_SHIM_EPOCH");
    return e ? strtoll(e, NULL, 10) : 0;
}

/* Without IMMUTOOLS_SHIM_EPOCH the clock and stat times are left alone (tools such as ostree
 * detect their own changes by directory mtimes). */
static int fixed_clock(void) { return getenv("IMMUTOOLS_SHIM_EPOCH") != NULL; }

/* splitmix64 over an FNV-1a hash of the seed: a fixed, well-mixed byte stream. */
static uint64_t rng_state;
static int rng_ready;

static uint64_t next64(void) {
    if (!rng_ready) {
        const char *s = getenv("IMMUTOOLS_SHIM_SEED");
        uint64_t h = 1469598103934665603ULL;
        for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        rng_state = h;
        rng_ready = 1;
    }
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill_bytes(void *buf, size_t len) {
    unsigned char *p = buf;
    while (len) {
        uint64_t v = next64();
        size_t n = len < 8 ? len : 8;
        memcpy(p, &v, n);
        p += n;
        len -= n;
    }
}

static void make_uuid(unsigned char *out) {
    fill_bytes(out, 16);
    out[6] = (out[6] & 0x0F) | 0x40; /* version 4 */
    out[8] = (out[8] & 0x3F) | 0x80; /* RFC 4122 variant */
}

void uuid_generate(uuid_t_ out) { make_uuid(out); }
void uuid_generate_random(uuid_t_ out) { make_uuid(out); }
void uuid_generate_time(uuid_t_ out) { make_uuid(out); }
int uuid_generate_time_safe(uuid_t_ out) { make_uuid(out); return 0; }

ssize_t getrandom(void *buf, size_t len, unsigned int flags) {
    (void)flags;
    fill_bytes(buf, len);
    return (ssize_t)len;
}

long random(void) { return (long)(next64() & 0x7FFFFFFF); }
int rand(void) { return (int)(next64() & 0x7FFFFFFF); }
void srandom(unsigned int s) { (void)s; }
void srand(unsigned int s) { (void)s; }

time_t time(time_t *t) {
    static time_t (*real)(time_t *);
    if (!fixed_clock()) {
        if (!real) real = dlsym(RTLD_NEXT, "time");
        return real(t);
    }
    time_t now = (time_t)shim_epoch();
    if (t) *t = now;
    return now;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    static int (*real)(struct timeval *restrict, void *restrict);
    if (!fixed_clock()) {
        if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
        return real(tv, tz);
    }
    tv->tv_sec = (time_t)shim_epoch();
    tv->tv_usec = 0;
    return 0;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (fixed_clock() && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        ts->tv_sec = (time_t)shim_epoch();
        ts->tv_nsec = 0;
        return 0;
    }
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    return real(clk, ts);
}

/* ---- owners map: (dev, ino) -> (uid, gid) ----
 * Sorted once and searched by bisection: a full-size tree has ~10^5 entries and the mkfs tools
 * stat every one of them several times. The builder writes each (dev, ino) once. */
struct owner { uint64_t dev, ino, new_ino; uint32_t uid, gid; };
static struct owner *owners;
static size_t n_owners;
static pthread_once_t owners_once = PTHREAD_ONCE_INIT;

static int owner_cmp(const void *a, const void *b) {
    const struct owner *x = a, *y = b;
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return 0;
}

static void load_owners(void) {
    const char *path = getenv("IMMUTOOLS_SHIM_OWNERS");
    if (!path) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t cap = 0;
    unsigned long long dev, ino, new_ino;
    unsigned int uid, gid;
    while (fscanf(f, "%llu %llu %u %u %llu", &dev, &ino, &uid, &gid, &new_ino) == 5) {
        if (n_owners == cap) {
            cap = cap ? cap * 2 : 256;
            struct owner *grown = realloc(owners, cap * sizeof *owners);
            if (!grown) break;
            owners = grown;
        }
        owners[n_owners++] = (struct owner){dev, ino, new_ino, uid, gid};
    }
    fclose(f);
    if (n_owners > 1) qsort(owners, n_owners, sizeof *owners, owner_cmp);
}

static int lookup_owner(uint64_t dev, uint64_t ino, uint32_t *uid, uint32_t *gid, uint64_t *new_ino) {
    pthread_once(&owners_once, load_owners);
    struct owner key = {dev, ino, 0, 0, 0};
    const struct owner *hit = n_owners ? bsearch(&key, owners, n_owners, sizeof *owners, owner_cmp) : NULL;
    if (!hit) return 0;
    *uid = hit->uid;
    *gid = hit->gid;
    *new_ino = hit->new_ino;
    return 1;
}

#define FIX_STAT(st)                                                                  \
    do {                                                                              \
        if (fixed_clock()) {                                                          \
            time_t e_ = (time_t)shim_epoch();                                         \
            (st)->st_atim.tv_sec = (st)->st_mtim.tv_sec = (st)->st_ctim.tv_sec = e_;  \
            (st)->st_atim.tv_nsec = (st)->st_mtim.tv_nsec = (st)->st_ctim.tv_nsec = 0;\
        }                                                                             \
        uint32_t u_, g_;                                                              \
        uint64_t i_;                                                                  \
        if (lookup_owner((st)->st_dev, (st)->st_ino, &u_, &g_, &i_)) {                \
            (st)->st_uid = u_;                                                        \
            (st)->st_gid = g_;                                                        \
            (st)->st_ino = i_;                                                        \
        }                                                                             \
    } while (0)

#define WRAP_PATH(name, st_type)                                                      \
    int name(const char *path, struct st_type *st) {                                  \
        static int (*real)(const char *, struct st_type *);                           \
        if (!real) real = dlsym(RTLD_NEXT, #name);                                    \
        int r = real(path, st);                                                       \
        if (r == 0) FIX_STAT(st);                                                     \
        return r;                                                                     \
    }

WRAP_PATH(stat, stat)
WRAP_PATH(lstat, stat)
WRAP_PATH(stat64, stat64)
WRAP_PATH(lstat64, stat64)

int fstat(int fd, struct stat *st) {
    static int (*real)(int, struct stat *);
    if (!real) real = dlsym(RTLD_NEXT, "fstat");
    int r = real(fd, st);
    if (r == 0) FIX_STAT(st);
    return r;
}

int fstat64(int fd, struct stat64 *st) {
    static int (*real)(int, struct stat64 *);
    if (!real) real = dlsym(RTLD_NEXT, "fstat64");
    int r = real(fd, st);
    if (r == 0) FIX_STAT(st);
    return r;
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags) {
    static int (*real)(int, const char *, struct stat *, int);
    if (!real) real = dlsym(RTLD_NEXT, "fstatat");
    int r = real(dirfd, path, st, flags);
    if (r == 0) FIX_STAT(st);
    return r;
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
    static int (*real)(int, const char *, struct stat64 *, int);
    if (!real) real = dlsym(RTLD_NEXT, "fstatat64");
    int r = real(dirfd, path, st, flags);
    if (r == 0) FIX_STAT(st);
    return r;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx) {
    static int (*real)(int, const char *, int, unsigned int, struct statx *);
    if (!real) real = dlsym(RTLD_NEXT, "statx");
    int r = real(dirfd, path, flags, mask, stx);
    if (r == 0) {
        if (fixed_clock()) {
            int64_t e = shim_epoch();
            stx->stx_atime.tv_sec = stx->stx_mtime.tv_sec = stx->stx_ctime.tv_sec = stx->stx_btime.tv_sec = e;
            stx->stx_atime.tv_nsec = stx->stx_mtime.tv_nsec = stx->stx_ctime.tv_nsec = stx->stx_btime.tv_nsec = 0;
        }
        uint32_t u, g;
        uint64_t i;
        if (lookup_owner(makedev(stx->stx_dev_major, stx->stx_dev_minor), stx->stx_ino, &u, &g, &i)) {
            stx->stx_uid = u;
            stx->stx_gid = g;
            stx->stx_ino = i;
        }
    }
    return r;
}

/* ---- sorted directory listings ---- */
struct sorted_dir {
    DIR *dir;
    struct dirent64 **ents;
    size_t n, next;
    struct sorted_dir *link;
};
static struct sorted_dir *sorted_dirs;
static pthread_mutex_t dirs_lock = PTHREAD_MUTEX_INITIALIZER;

static int by_name(const void *a, const void *b) {
    return strcmp((*(struct dirent64 *const *)a)->d_name, (*(struct dirent64 *const *)b)->d_name);
}

static struct dirent64 *(*real_readdir64_fn)(DIR *);

static DIR *remember(DIR *d) {
    if (!d) return d;
    if (!real_readdir64_fn) real_readdir64_fn = dlsym(RTLD_NEXT, "readdir64");
    struct sorted_dir *s = calloc(1, sizeof *s);
    if (!s) return d;
    s->dir = d;
    size_t cap = 0;
    struct dirent64 *e;
    while ((e = real_readdir64_fn(d)) != NULL) {
        if (s->n == cap) {
            cap = cap ? cap * 2 : 64;
            struct dirent64 **grown = realloc(s->ents, cap * sizeof *s->ents);
            if (!grown) break;
            s->ents = grown;
        }
        struct dirent64 *copy = malloc(e->d_reclen > sizeof *e ? e->d_reclen : sizeof *e);
        if (!copy) break;
        memcpy(copy, e, e->d_reclen > sizeof *e ? sizeof *e : e->d_reclen);
        strncpy(copy->d_name, e->d_name, sizeof copy->d_name - 1);
        copy->d_name[sizeof copy->d_name - 1] = 0;
        s->ents[s->n++] = copy;
    }
    if (s->n) qsort(s->ents, s->n, sizeof *s->ents, by_name);
    pthread_mutex_lock(&dirs_lock);
    s->link = sorted_dirs;
    sorted_dirs = s;
    pthread_mutex_unlock(&dirs_lock);
    return d;
}

static struct sorted_dir *find_dir(DIR *d) {
    pthread_mutex_lock(&dirs_lock);
    struct sorted_dir *s = sorted_dirs;
    while (s && s->dir != d) s = s->link;
    pthread_mutex_unlock(&dirs_lock);
    return s;
}

DIR *opendir(const char *name) {
    static DIR *(*real)(const char *);
    if (!real) real = dlsym(RTLD_NEXT, "opendir");
    return remember(real(name));
}

DIR *fdopendir(int fd) {
    static DIR *(*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdopendir");
    return remember(real(fd));
}

struct dirent64 *readdir64(DIR *d) {
    struct sorted_dir *s = find_dir(d);
    if (!s) {
        if (!real_readdir64_fn) real_readdir64_fn = dlsym(RTLD_NEXT, "readdir64");
        return real_readdir64_fn(d);
    }
    return s->next < s->n ? s->ents[s->next++] : NULL;
}

/* On LP64 glibc struct dirent and struct dirent64 have the same layout. */
struct dirent *readdir(DIR *d) { return (struct dirent *)readdir64(d); }

void rewinddir(DIR *d) {
    static void (*real)(DIR *);
    if (!real) real = dlsym(RTLD_NEXT, "rewinddir");
    struct sorted_dir *s = find_dir(d);
    if (s) s->next = 0;
    real(d);
}

int closedir(DIR *d) {
    static int (*real)(DIR *);
    if (!real) real = dlsym(RTLD_NEXT, "closedir");
    pthread_mutex_lock(&dirs_lock);
    struct sorted_dir **pp = &sorted_dirs;
    while (*pp && (*pp)->dir != d) pp = &(*pp)->link;
    struct sorted_dir *s = *pp;
    if (s) *pp = s->link;
    pthread_mutex_unlock(&dirs_lock);
    if (s) {
        for (size_t i = 0; i < s->n; i++) free(s->ents[i]);
        free(s->ents);
        free(s);
    }
    return real(d);
}

/* ---- unprivileged system-root tools (IMMUTOOLS_SHIM_UNPRIVILEGED) ---- */
static int unprivileged(void) { return getenv("IMMUTOOLS_SHIM_UNPRIVILEGED") != NULL; }

int chown(const char *path, uid_t uid, gid_t gid) {
    static int (*real)(const char *, uid_t, gid_t);
    if (unprivileged()) return 0;
    if (!real) real = dlsym(RTLD_NEXT, "chown");
    return real(path, uid, gid);
}

int lchown(const char *path, uid_t uid, gid_t gid) {
    static int (*real)(const char *, uid_t, gid_t);
    if (unprivileged()) return 0;
    if (!real) real = dlsym(RTLD_NEXT, "lchown");
    return real(path, uid, gid);
}

int fchown(int fd, uid_t uid, gid_t gid) {
    static int (*real)(int, uid_t, gid_t);
    if (unprivileged()) return 0;
    if (!real) real = dlsym(RTLD_NEXT, "fchown");
    return real(fd, uid, gid);
}

int fchownat(int dirfd, const char *path, uid_t uid, gid_t gid, int flags) {
    static int (*real)(int, const char *, uid_t, gid_t, int);
    if (unprivileged()) return 0;
    if (!real) real = dlsym(RTLD_NEXT, "fchownat");
    return real(dirfd, path, uid, gid, flags);
}

/* linux/fs.h: FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int) */
#define SHIM_FIFREEZE 0xC0045877UL
#define SHIM_FITHAW 0xC0045878UL

int ioctl(int fd, unsigned long request, void *arg) {
    static int (*real)(int, unsigned long, void *);
    if (unprivileged() && (request == SHIM_FIFREEZE || request == SHIM_FITHAW)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    if (!real) real = dlsym(RTLD_NEXT, "ioctl");
    return real(fd, request, arg);
}

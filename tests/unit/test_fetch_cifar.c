/* test_fetch_cifar.c — graft fetch cifar10: download (verified MD5), safe extraction and
 * renaming into place, against a server this test starts on 127.0.0.1 serving a small
 * archive in the CIFAR-10 binary layout that the test writes with libarchive.  Hostile
 * archives (links, "..", absolute paths, devices) are refused without leaving anything. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/fetch_cifar.h"
#include "data/spec.h"
#include "graft/graft.h"
#include "http_server.h"
#include "io/hash.h"

#define PATH_BYTES 4096
#define DIR_BYTES 1024
#define RECORD (1 + 3072)
#define ARCHIVE_NAME "cifar-10-binary.tar.gz"

static char served[400];       /* what the server serves (it takes up to 511 bytes) */
static char root[DIR_BYTES];   /* --root */
static test_http_server server;
static graft_cifar_archive test_archive; /* cifar10 with the test archive's MD5 */
static char test_md5[GRAFT_HASH_HEX_BYTES];

/* ---- archives ------------------------------------------------------------------- */

typedef struct member {
    const char *name;
    int type;          /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFIFO, or 0 for a hard link */
    const void *data;
    size_t size;
    const char *link;  /* symlink or hard link target */
} member;

static void write_archive(const char *path, const member *m, int n) {
    struct archive *a = archive_write_new();
    archive_write_add_filter_gzip(a);
    archive_write_set_format_pax_restricted(a);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (int i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        if (m[i].type == 0) {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, m[i].link);
            archive_entry_set_size(e, 0);
        } else {
            archive_entry_set_filetype(e, (unsigned)m[i].type);
            archive_entry_set_size(e, m[i].type == AE_IFREG ? (la_int64_t)m[i].size : 0);
            if (m[i].type == AE_IFLNK) archive_entry_set_symlink(e, m[i].link);
        }
        archive_entry_set_perm(e, m[i].type == AE_IFDIR ? 0755 : 0644);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (m[i].type == AE_IFREG && m[i].size)
            assert_int_equal(archive_write_data(a, m[i].data, m[i].size), (la_ssize_t)m[i].size);
        archive_entry_free(e);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

/* The CIFAR-10 binary layout with two records per batch; dir is the top folder name. */
static void write_cifar_archive(const char *path, const char *dir) {
    static unsigned char records[2 * RECORD];
    records[0] = 3;
    records[RECORD] = 9;
    static const char names[] = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    char n[8][128];
    member m[9];
    const char *files[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                           "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"};
    snprintf(n[7], sizeof n[7], "%s/", dir);
    m[0] = (member){n[7], AE_IFDIR, NULL, 0, NULL};
    for (int i = 0; i < 7; i++) {
        snprintf(n[i], sizeof n[i], "%s/%s", dir, files[i]);
        m[i + 1] = i < 6 ? (member){n[i], AE_IFREG, records, sizeof records, NULL}
                         : (member){n[i], AE_IFREG, names, sizeof names - 1, NULL};
    }
    write_archive(path, m, 8);
}

/* ---- folders -------------------------------------------------------------------- */

static int entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static bool exists(const char *dir, const char *name) {
    char p[PATH_BYTES];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return lstat(p, &st) == 0;
}

static void set_base(const char *mode) {
    char base[256];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/%s/", server.port, mode);
    setenv("GRAFT_DATA_URL_BASE", base, 1);
}

static int setup(void **state) {
    (void)state;
    const char *tmp = getenv("GRAFT_TMP");
    snprintf(served, sizeof served, "%s/graft_test_fetch_cifar.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(served)) return -1;
    snprintf(root, sizeof root, "%s/root", served);
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/%s", served, ARCHIVE_NAME);
    write_cifar_archive(path, "cifar-10-batches-bin");
    if (graft_hash_file(path, GRAFT_HASH_MD5, test_md5)) return -1;
    test_archive = *graft_cifar_archive_find("cifar10");
    test_archive.md5 = test_md5;
    unsetenv("GRAFT_OFFLINE");
    return test_http_start(&server, served);
}

static int teardown(void **state) {
    (void)state;
    test_http_stop(&server);
    graft_remove_tree(served);
    return 0;
}

static int clean_root(void **state) {
    (void)state;
    graft_remove_tree(root);
    set_base("ok");
    return 0;
}

/* ---- fetching ----------------------------------------------------------------------- */

static void the_registry_has_the_official_archives(void **state) {
    (void)state;
    const graft_cifar_archive *a = graft_cifar_archive_find("cifar10");
    assert_string_equal(a->md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_string_equal(graft_cifar_archive_find("cifar100")->md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_null(graft_cifar_archive_find("imagenet"));
    unsetenv("GRAFT_DATA_URL_BASE");
    char url[512];
    assert_int_equal(graft_cifar_url(a, url, sizeof url), GRAFT_OK);
    assert_string_equal(url, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz");
    setenv("GRAFT_DATA_URL_BASE", "http://127.0.0.1:9/x", 1);
    assert_int_equal(graft_cifar_url(a, url, sizeof url), GRAFT_OK);
    assert_string_equal(url, "http://127.0.0.1:9/x/cifar-10-binary.tar.gz");
}

static void a_verified_archive_is_extracted_into_place(void **state) {
    (void)state;
    char dir[PATH_BYTES], want[PATH_BYTES];
    assert_int_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_OK);
    snprintf(want, sizeof want, "%s/cifar-10-batches-bin", root);
    assert_string_equal(dir, want);
    assert_int_equal(entries(root), 1); /* no archive, no temporary folder left */
    char spec[PATH_BYTES];
    snprintf(spec, sizeof spec, "cifar10:%s", root);
    graft_data *d;
    assert_int_equal(graft_data_open(spec, NULL, &d), GRAFT_OK);
    assert_int_equal(graft_source_len(d->train), 10);
    assert_int_equal(graft_source_label(d->train, 1), 9);
    graft_data_free(d);
    /* a second fetch finds it and asks the server nothing */
    int before = server.requests;
    set_base("nothing-here");
    assert_int_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_OK);
    assert_int_equal(server.requests, before);
}

static void torchvisions_python_folder_counts_as_fetched(void **state) {
    (void)state;
    char py[2 * DIR_BYTES], dir[PATH_BYTES], p[PATH_BYTES];
    snprintf(py, sizeof py, "%s/cifar-10-batches-py", root);
    mkdir(root, 0777);
    mkdir(py, 0777);
    const char *files[] = {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                           "data_batch_5", "test_batch", "batches.meta"};
    for (int i = 0; i < 7; i++) {
        snprintf(p, sizeof p, "%s/%s", py, files[i]);
        FILE *f = fopen(p, "wb");
        fclose(f);
    }
    int before = server.requests;
    assert_int_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_OK);
    assert_string_equal(dir, py);
    assert_int_equal(server.requests, before);
}

static void a_checksum_mismatch_leaves_nothing(void **state) {
    (void)state;
    set_base("corrupt");
    char dir[PATH_BYTES];
    assert_int_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "MD5 mismatch"));
    assert_non_null(strstr(graft_errmsg(), ARCHIVE_NAME));
    assert_int_equal(entries(root), 0);
}

static void a_404_leaves_nothing(void **state) {
    (void)state;
    set_base("missing");
    char dir[PATH_BYTES];
    assert_int_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "HTTP 404"));
    assert_int_equal(entries(root), 0);
}

static void a_cut_transfer_leaves_nothing(void **state) {
    (void)state;
    set_base("cut");
    char dir[PATH_BYTES];
    assert_int_not_equal(graft_cifar_fetch(&test_archive, root, NULL, dir, sizeof dir), GRAFT_OK);
    assert_int_equal(entries(root), 0);
}

static void offline_names_what_to_download(void **state) {
    (void)state;
    graft_fetch_options o = {.offline = 1};
    char dir[PATH_BYTES];
    assert_int_equal(graft_cifar_fetch(&test_archive, root, &o, dir, sizeof dir), GRAFT_ERR_NOTFOUND);
    assert_non_null(strstr(graft_errmsg(), ARCHIVE_NAME));
    assert_non_null(strstr(graft_errmsg(), root));
    assert_false(exists(root, "."));
}

static void an_archive_without_the_dataset_is_refused(void **state) {
    (void)state;
    char path[PATH_BYTES], md5[GRAFT_HASH_HEX_BYTES], dir[PATH_BYTES];
    snprintf(path, sizeof path, "%s/other.tar.gz", served);
    write_cifar_archive(path, "something-else");
    assert_int_equal(graft_hash_file(path, GRAFT_HASH_MD5, md5), GRAFT_OK);
    graft_cifar_archive a = test_archive;
    a.file = "other.tar.gz";
    a.md5 = md5;
    assert_int_equal(graft_cifar_fetch(&a, root, NULL, dir, sizeof dir), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "cifar-10-batches-bin/data_batch_1.bin"));
    assert_false(exists(root, "cifar-10-batches-bin"));
    assert_false(exists(root, "something-else"));
    assert_int_equal(entries(root), 1); /* only the verified archive, kept for the next try */
}

/* ---- hostile archives ---------------------------------------------------------------- */

/* Extracts an archive of one hostile member after a harmless one; expects a refusal
 * naming `needle`, and nothing left in the scratch root. */
static void expect_refused(const member *bad, const char *needle) {
    char path[PATH_BYTES], tmpl[PATH_BYTES];
    snprintf(path, sizeof path, "%s/hostile.tar.gz", served);
    member m[2] = {{"ok.txt", AE_IFREG, "fine", 4, NULL}, *bad};
    write_archive(path, m, 2);
    mkdir(root, 0777);
    snprintf(tmpl, sizeof tmpl, "%s/.graft-extract-XXXXXX", root);
    assert_int_equal(graft_extract_archive(path, tmpl), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), needle));
    assert_int_equal(entries(root), 0);
    assert_false(exists(served, "escaped"));
    unlink(path);
}

static void links_and_escaping_paths_are_refused(void **state) {
    (void)state;
    member sym = {"cifar/link", AE_IFLNK, NULL, 0, "/etc/passwd"};
    expect_refused(&sym, "is a symbolic link");
    member hard = {"cifar/hard", 0, NULL, 0, "ok.txt"};
    expect_refused(&hard, "is a hard link");
    member up = {"../../escaped", AE_IFREG, "x", 1, NULL};
    expect_refused(&up, "climbs out with '..'");
    member abs = {"/tmp/escaped", AE_IFREG, "x", 1, NULL};
    expect_refused(&abs, "absolute path");
    member fifo = {"cifar/fifo", AE_IFIFO, NULL, 0, NULL};
    expect_refused(&fifo, "is a fifo");
}

static void a_corrupt_archive_is_refused(void **state) {
    (void)state;
    char path[PATH_BYTES], tmpl[PATH_BYTES];
    snprintf(path, sizeof path, "%s/junk.tar.gz", served);
    FILE *f = fopen(path, "wb");
    fputs("\x1f\x8b this is not gzip data at all, just bytes", f);
    fclose(f);
    mkdir(root, 0777);
    snprintf(tmpl, sizeof tmpl, "%s/.graft-extract-XXXXXX", root);
    assert_int_equal(graft_extract_archive(path, tmpl), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "junk.tar.gz"));
    assert_int_equal(entries(root), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(the_registry_has_the_official_archives, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(a_verified_archive_is_extracted_into_place, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(torchvisions_python_folder_counts_as_fetched, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(a_checksum_mismatch_leaves_nothing, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(a_404_leaves_nothing, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(a_cut_transfer_leaves_nothing, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(offline_names_what_to_download, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(an_archive_without_the_dataset_is_refused, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(links_and_escaping_paths_are_refused, clean_root, clean_root),
        cmocka_unit_test_setup_teardown(a_corrupt_archive_is_refused, clean_root, clean_root),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

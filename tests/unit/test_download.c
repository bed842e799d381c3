/* test_download.c — verified downloads, the weights cache and the pretrained registry,
 * against a server this test starts on 127.0.0.1 (no other address is contacted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "graft/graft.h"
#include "http_server.h"
#include "io/download.h"
#include "io/hash.h"

static char root[512];  /* files the server serves */
static char cache[512]; /* GRAFT_HOME */
static test_http_server server;

static void write_file(const char *dir, const char *name, size_t bytes, unsigned seed) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    srand(seed);
    for (size_t i = 0; i < bytes; i++) fputc(rand() & 0xff, f);
    fclose(f);
}

/* Number of entries in a folder other than . and .. */
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

static void clear(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

static int setup(void **state) {
    (void)state;
    fx_tmp_path(root, sizeof root, "served");
    fx_tmp_path(cache, sizeof cache, "cache");
    mkdir(root, 0700);
    mkdir(cache, 0700);
    write_file(root, "blob.bin", 300000, 1);
    write_file(root, "vgg11-8a719046.pth", 4096, 2); /* not the real file: its hash differs */
    if (test_http_start(&server, root)) return -1;
    setenv("GRAFT_HOME", cache, 1);
    unsetenv("GRAFT_OFFLINE");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_http_stop(&server);
    clear(root);
    clear(cache);
    rmdir(root);
    rmdir(cache);
    return 0;
}

static void url_of(char *buf, size_t size, const char *mode, const char *name) {
    snprintf(buf, size, "http://127.0.0.1:%d/%s/%s", server.port, mode, name);
}

static void set_base(const char *mode) {
    char base[256];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/%s/", server.port, mode);
    setenv("GRAFT_MODEL_URL_BASE", base, 1);
}

static void a_good_file_arrives_verified_and_whole(void **state) {
    (void)state;
    char src[1024], dst[1024], url[256], want[GRAFT_HASH_HEX_BYTES], got[GRAFT_HASH_HEX_BYTES];
    snprintf(src, sizeof src, "%s/blob.bin", root);
    snprintf(dst, sizeof dst, "%s/blob.bin", cache);
    assert_int_equal(graft_hash_file(src, GRAFT_HASH_SHA256, want), GRAFT_OK);
    url_of(url, sizeof url, "ok", "blob.bin");
    char prefix[9];
    memcpy(prefix, want, 8);
    prefix[8] = 0;
    graft_download_options o = {.expected = prefix, .hash = GRAFT_HASH_SHA256};
    assert_int_equal(graft_download(url, dst, &o), GRAFT_OK);
    assert_int_equal(graft_hash_file(dst, GRAFT_HASH_SHA256, got), GRAFT_OK);
    assert_string_equal(got, want);
    assert_int_equal(entries(cache), 1);
    /* a full digest works as well as a prefix, and MD5 too */
    o.expected = want;
    assert_int_equal(graft_download(url, dst, &o), GRAFT_OK);
    assert_int_equal(graft_hash_file(src, GRAFT_HASH_MD5, want), GRAFT_OK);
    o.hash = GRAFT_HASH_MD5;
    o.expected = want;
    assert_int_equal(graft_download(url, dst, &o), GRAFT_OK);
    clear(cache);
}

static void a_corrupted_file_is_deleted_and_both_hashes_are_named(void **state) {
    (void)state;
    char dst[1024], url[256], want[GRAFT_HASH_HEX_BYTES], src[1024];
    snprintf(src, sizeof src, "%s/blob.bin", root);
    snprintf(dst, sizeof dst, "%s/blob.bin", cache);
    assert_int_equal(graft_hash_file(src, GRAFT_HASH_SHA256, want), GRAFT_OK);
    url_of(url, sizeof url, "corrupt", "blob.bin");
    graft_download_options o = {.expected = want, .hash = GRAFT_HASH_SHA256};
    assert_int_equal(graft_download(url, dst, &o), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "SHA-256 mismatch"));
    assert_non_null(strstr(graft_errmsg(), want));
    assert_int_equal(entries(cache), 0);
}

static void a_404_fails_naming_the_url_and_leaves_nothing(void **state) {
    (void)state;
    char dst[1024], url[256];
    snprintf(dst, sizeof dst, "%s/nothing.bin", cache);
    url_of(url, sizeof url, "ok", "nothing.bin");
    graft_download_options o = {.expected = NULL, .hash = GRAFT_HASH_SHA256};
    assert_int_equal(graft_download(url, dst, &o), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), "HTTP 404"));
    assert_non_null(strstr(graft_errmsg(), url));
    assert_int_equal(entries(cache), 0);
}

static void a_transfer_cut_midway_fails_and_leaves_nothing(void **state) {
    (void)state;
    char dst[1024], url[256];
    snprintf(dst, sizeof dst, "%s/blob.bin", cache);
    url_of(url, sizeof url, "cut", "blob.bin");
    graft_download_options o = {.expected = NULL, .hash = GRAFT_HASH_SHA256};
    assert_int_equal(graft_download(url, dst, &o), GRAFT_ERR_IO);
    assert_non_null(strstr(graft_errmsg(), url));
    assert_int_equal(entries(cache), 0);
}

static void record_progress(void *user, uint64_t done, uint64_t total) {
    uint64_t *seen = user;
    if (done < seen[0]) seen[2] = 1; /* went backwards */
    seen[0] = done;
    seen[1] = total;
}

static void progress_reports_the_bytes_received(void **state) {
    (void)state;
    char dst[1024], url[256];
    snprintf(dst, sizeof dst, "%s/blob.bin", cache);
    url_of(url, sizeof url, "ok", "blob.bin");
    uint64_t seen[3] = {0, 0, 0};
    graft_download_options o = {.hash = GRAFT_HASH_SHA256, .progress = record_progress, .user = seen};
    assert_int_equal(graft_download(url, dst, &o), GRAFT_OK);
    assert_int_equal(seen[0], 300000);
    assert_int_equal(seen[1], 300000);
    assert_int_equal(seen[2], 0);
    clear(cache);
}

static void fetch_verifies_the_registry_hash(void **state) {
    (void)state;
    set_base("ok");
    const graft_pretrained *p = graft_pretrained_find("vgg11", NULL);
    assert_non_null(p);
    char path[1024];
    assert_int_equal(graft_pretrained_fetch(p, NULL, path, sizeof path), GRAFT_ERR_FORMAT);
    assert_non_null(strstr(graft_errmsg(), "expected 8a719046"));
    assert_int_equal(entries(cache), 0);
}

static void fetch_reuses_a_cached_file_without_the_network(void **state) {
    (void)state;
    set_base("ok");
    write_file(cache, "vgg16-397923af.pth", 16, 3);
    int before = server.requests;
    const graft_pretrained *p = graft_pretrained_find("vgg16", "IMAGENET1K_V1");
    char path[1024], expected[1024];
    assert_int_equal(graft_pretrained_fetch(p, NULL, path, sizeof path), GRAFT_OK);
    snprintf(expected, sizeof expected, "%s/vgg16-397923af.pth", cache);
    assert_string_equal(path, expected);
    assert_int_equal(server.requests, before);
    clear(cache);
}

static void offline_never_touches_the_network_and_says_where_to_put_the_file(void **state) {
    (void)state;
    set_base("ok");
    int before = server.requests;
    const graft_pretrained *p = graft_pretrained_find("vgg19_bn", "v1");
    char path[1024];
    graft_fetch_options o = {.offline = 1};
    assert_int_equal(graft_pretrained_fetch(p, &o, path, sizeof path), GRAFT_ERR_NOTFOUND);
    assert_non_null(strstr(graft_errmsg(), "vgg19_bn-c79401a0.pth"));
    assert_non_null(strstr(graft_errmsg(), cache));
    setenv("GRAFT_OFFLINE", "1", 1);
    assert_int_equal(graft_pretrained_fetch(p, NULL, path, sizeof path), GRAFT_ERR_NOTFOUND);
    unsetenv("GRAFT_OFFLINE");
    assert_int_equal(server.requests, before);
}

static void the_cache_folder_follows_graft_then_torch_conventions(void **state) {
    (void)state;
    char dir[1024];
    setenv("GRAFT_HOME", "/g", 1);
    setenv("TORCH_HOME", "/t", 1);
    setenv("XDG_CACHE_HOME", "/x", 1);
    setenv("HOME", "/h", 1);
    assert_int_equal(graft_cache_dir(dir, sizeof dir), GRAFT_OK);
    assert_string_equal(dir, "/g");
    unsetenv("GRAFT_HOME");
    assert_int_equal(graft_cache_dir(dir, sizeof dir), GRAFT_OK);
    assert_string_equal(dir, "/t/hub/checkpoints");
    unsetenv("TORCH_HOME");
    assert_int_equal(graft_cache_dir(dir, sizeof dir), GRAFT_OK);
    assert_string_equal(dir, "/x/torch/hub/checkpoints");
    unsetenv("XDG_CACHE_HOME");
    assert_int_equal(graft_cache_dir(dir, sizeof dir), GRAFT_OK);
    assert_string_equal(dir, "/h/.cache/torch/hub/checkpoints");
    setenv("GRAFT_HOME", cache, 1);
}

static void the_registry_has_torchvision_file_names_and_urls(void **state) {
    (void)state;
    unsetenv("GRAFT_MODEL_URL_BASE");
    const graft_pretrained *p = graft_pretrained_find("vgg16", NULL);
    assert_non_null(p);
    assert_string_equal(p->file, "vgg16-397923af.pth");
    char url[256];
    assert_int_equal(graft_pretrained_url(p, url, sizeof url), GRAFT_OK);
    assert_string_equal(url, "https://download.pytorch.org/models/vgg16-397923af.pth");
    for (size_t i = 0; i < graft_pretrained_count(); i++) { /* the hash prefix is in the name */
        const graft_pretrained *e = graft_pretrained_at(i);
        assert_non_null(strstr(e->file, e->sha256_prefix));
        assert_int_equal(strlen(e->sha256_prefix), 8);
    }
    assert_null(graft_pretrained_find("vgg16", "IMAGENET1K_V9"));
    assert_null(graft_pretrained_find("alexnet", NULL));
    assert_non_null(strstr(graft_errmsg(), "alexnet"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_good_file_arrives_verified_and_whole),
        cmocka_unit_test(a_corrupted_file_is_deleted_and_both_hashes_are_named),
        cmocka_unit_test(a_404_fails_naming_the_url_and_leaves_nothing),
        cmocka_unit_test(a_transfer_cut_midway_fails_and_leaves_nothing),
        cmocka_unit_test(progress_reports_the_bytes_received),
        cmocka_unit_test(fetch_verifies_the_registry_hash),
        cmocka_unit_test(fetch_reuses_a_cached_file_without_the_network),
        cmocka_unit_test(offline_never_touches_the_network_and_says_where_to_put_the_file),
        cmocka_unit_test(the_cache_folder_follows_graft_then_torch_conventions),
        cmocka_unit_test(the_registry_has_torchvision_file_names_and_urls),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* download.c — libcurl transfer into an atomic file, hashed on the way. */
#include "io/download.h"

#include <curl/curl.h>
#include <pthread.h>
#include <string.h>

#include "core/error.h"
#include "io/atomic_file.h"

#define CONNECT_TIMEOUT_SECONDS 30L
#define STALL_SECONDS 60L /* abort when under 1 byte/s for this long */

typedef struct transfer {
    graft_atomic_file file;
    graft_hasher *hasher;
    graft_status failure; /* set by the write callback */
    const graft_download_options *o;
} transfer;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void init_curl(void) { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

static size_t on_data(char *data, size_t size, size_t count, void *user) {
    transfer *t = user;
    size_t bytes = size * count;
    if ((t->failure = graft_atomic_write(&t->file, data, bytes))) return 0;
    if ((t->failure = graft_hasher_update(t->hasher, data, bytes))) return 0;
    return bytes;
}

static int on_progress(void *user, curl_off_t total, curl_off_t done, curl_off_t ut, curl_off_t un) {
    (void)ut;
    (void)un;
    transfer *t = user;
    if (t->o->progress) t->o->progress(t->o->user, (uint64_t)done, (uint64_t)total);
    return 0;
}

graft_status graft_download(const char *url, const char *dest, const graft_download_options *o) {
    pthread_once(&curl_once, init_curl);
    if (curl_init_result != CURLE_OK) return graft_error(GRAFT_ERR_IO, "libcurl failed to initialise");
    transfer t = {.o = o};
    graft_status s = graft_hasher_new(o->hash, &t.hasher);
    if (s) return s;
    if ((s = graft_atomic_open(&t.file, dest))) {
        graft_hasher_free(t.hasher);
        return s;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        s = graft_error(GRAFT_ERR_NOMEM, "%s: libcurl could not start a transfer", url);
        goto done;
    }
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_SECONDS);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, STALL_SECONDS);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "graft/" GRAFT_VERSION);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, o->progress ? 0L : 1L);
    CURLcode rc = curl_easy_perform(curl);
    if (rc != CURLE_OK) {
        long http = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
        if (t.failure)
            s = t.failure;
        else if (rc == CURLE_HTTP_RETURNED_ERROR)
            s = graft_error(GRAFT_ERR_IO, "%s: HTTP %ld", url, http);
        else
            s = graft_error(GRAFT_ERR_IO, "%s: %s", url, curl_err[0] ? curl_err : curl_easy_strerror(rc));
        goto done;
    }
    char hex[GRAFT_HASH_HEX_BYTES] = "";
    if ((s = graft_hasher_final(t.hasher, hex))) goto done;
    if (o->expected && !graft_hash_matches(hex, o->expected)) {
        s = graft_error(GRAFT_ERR_FORMAT, "%s: %s mismatch: expected %s..., got %s", url, graft_hash_name(o->hash),
                        o->expected, hex);
        goto done;
    }
    s = graft_atomic_commit(&t.file);
done:
    if (s) graft_atomic_abort(&t.file);
    if (curl) curl_easy_cleanup(curl);
    graft_hasher_free(t.hasher);
    return s;
}

/* http_server.h — a tiny HTTP/1.0 server on 127.0.0.1 for download tests (header-only).
 *
 * It serves files from a folder on an ephemeral loopback port, one connection at a
 * time, from a thread.  Paths choose the behaviour:
 *   /ok/NAME       the file, whole
 *   /corrupt/NAME  the file with its first byte flipped (a hash mismatch)
 *   /cut/NAME      headers announcing the whole file, then half of it, then close
 *   anything else  404
 * Nothing listens on any other address. */
#ifndef GRAFT_TEST_HTTP_SERVER_H
#define GRAFT_TEST_HTTP_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct test_http_server {
    int listen_fd;
    int port;
    char root[512];
    pthread_t thread;
    volatile int stop;
    int requests;
} test_http_server;

static void ths_send_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void ths_reply(test_http_server *s, int fd) {
    char req[2048];
    ssize_t n = recv(fd, req, sizeof req - 1, 0);
    if (n <= 0) return;
    req[n] = 0;
    char method[16], path[1024];
    if (sscanf(req, "%15s %1023s", method, path) != 2) return;
    s->requests++;
    const char *modes[] = {"/ok/", "/corrupt/", "/cut/"};
    int mode = -1;
    const char *name = NULL;
    for (int i = 0; i < 3; i++)
        if (!strncmp(path, modes[i], strlen(modes[i]))) mode = i, name = path + strlen(modes[i]);
    char file[2048];
    unsigned char *body = NULL;
    long size = 0;
    if (mode >= 0 && !strstr(name, "..")) {
        snprintf(file, sizeof file, "%s/%s", s->root, name);
        FILE *f = fopen(file, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            size = ftell(f);
            fseek(f, 0, SEEK_SET);
            body = malloc((size_t)size + 1);
            if (fread(body, 1, (size_t)size, f) != (size_t)size) size = 0;
            fclose(f);
        }
    }
    char head[256];
    if (!body) {
        const char *msg = "not found\n";
        snprintf(head, sizeof head, "HTTP/1.0 404 Not Found\r\nContent-Length: %zu\r\n\r\n", strlen(msg));
        ths_send_all(fd, head, strlen(head));
        ths_send_all(fd, msg, strlen(msg));
        return;
    }
    if (mode == 1 && size > 0) body[0] ^= 0xff;
    snprintf(head, sizeof head, "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %ld\r\n\r\n",
             size);
    ths_send_all(fd, head, strlen(head));
    ths_send_all(fd, body, (size_t)(mode == 2 ? size / 2 : size));
    free(body);
}

static void *ths_main(void *arg) {
    test_http_server *s = arg;
    while (!s->stop) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        if (!s->stop) ths_reply(s, fd);
        shutdown(fd, SHUT_RDWR);
        close(fd);
    }
    return NULL;
}

/* Starts serving root; returns 0 on success. */
static int test_http_start(test_http_server *s, const char *root) {
    memset(s, 0, sizeof *s);
    snprintf(s->root, sizeof s->root, "%s", root);
    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->listen_fd < 0) return -1;
    int one = 1;
    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) || listen(s->listen_fd, 8) ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &len)) {
        close(s->listen_fd);
        return -1;
    }
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->thread, NULL, ths_main, s);
}

static void test_http_stop(test_http_server *s) {
    s->stop = 1;
    /* wake the accept() with one last connection */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0) {
        connect(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
    }
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
}

#endif

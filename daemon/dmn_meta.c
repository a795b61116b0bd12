/* daemon: request metadata → dmn_meta_t (dmn_meta.h). */
#include "daemon/dmn_meta.h"

#include <string.h>

static int key_is(const char *key, size_t key_len, const char *name)
{
    return key_len == strlen(name) && memcmp(key, name, key_len) == 0;
}

void dmn_meta_init(dmn_meta_t *m)
{
    memset(m, 0, sizeof(*m));
}

int dmn_meta_add(dmn_meta_t *m, const char *key, size_t key_len, const char *value,
                 size_t value_len)
{
    if (key_is(key, key_len, "x-request-id")) {
        size_t n = value_len < DMN_RID_MAX ? value_len : DMN_RID_MAX;
        for (size_t j = 0; j < n; j++) { /* keep logs and ids printable */
            unsigned char b = (unsigned char)value[j];
            m->rid[j] = b < 0x20 || b > 0x7e ? '?' : (char)b;
        }
        m->rid[n] = 0;
    }
    if (key_is(key, key_len, "x-session-id")) { /* the last one sent wins */
        m->has_sid = true;
        m->sid_bad = value_len > STORE_ID_MAX || memchr(value, 0, value_len) != NULL;
        size_t n = m->sid_bad ? 0 : value_len;
        memcpy(m->sid, value, n);
        m->sid[n] = 0;
    }
    dmn_auth_md_take(&m->auth, key, key_len, value, value_len);
    return 0;
}

/* daemon: SIGHUP — reloads what may change without a restart (the API keys file). A reload
 * that fails keeps what is in use and logs why. */
#include "daemon/dmn.h"

void dmn_reload(dmn_server_t *s)
{
    dmn_log(DMN_INFO, "reload", NULL, NULL, "SIGHUP: reloading");
    dmn_auth_reload(s);
}

/* convc runtime: the message for each error code of convc_runtime.h. */
#include "convc_runtime.h"

static const char *const messages[CONVC_ERR_COUNT] = {
    [CONVC_OK] = "success",
    [CONVC_ERR_NOMEM] = "out of memory allocating a scratch buffer",
    [CONVC_ERR_SIZE] = "a size argument is negative or too large",
};

const char *convc_error_message(int code) {
    if (code < 0 || code >= CONVC_ERR_COUNT) return "unknown error code";
    return messages[code];
}

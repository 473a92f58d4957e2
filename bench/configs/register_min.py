"""bench.register_cost's KEMI Python baseline: save() and nothing else (register_min.cfg)."""

import KSR


class Router:
    def child_init(self, rank: int) -> int:
        return 0

    def ksr_request_route(self, msg: object) -> int:
        if KSR.is_REGISTER():
            KSR.registrar.save("location", 0)
            return 1
        KSR.sl.sl_send_reply(404, "Not here")
        return 1


def mod_init() -> Router:
    return Router()

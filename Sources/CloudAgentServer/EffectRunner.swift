import CloudAgentCore
import Foundation
import Logging
import Synchronization

/// Runs the effects of committed decisions, after the commit and outside any lock. Slow ones
/// (a launch, a stop's grace, git) run as background jobs unless the caller waits for them
/// (`awaiting`: DELETE waits for the processes to be gone). Every effect is idempotent.
final class EffectRunner: Sendable {
    struct Parts: Sendable {
        var lifecycle: RuntimeLifecycle
        var gateway: RuntimeGateway
        var autoCommit: AutoCommitRunner
    }

    private let parts = Mutex<Parts?>(nil)
    let scheduler: WakeUpScheduler
    let callbackWakeUps: WakeSignal

    init(scheduler: WakeUpScheduler, callbackWakeUps: WakeSignal) {
        self.scheduler = scheduler
        self.callbackWakeUps = callbackWakeUps
    }

    /// Connects the runners (they are built after this, with it).
    func bind(_ parts: Parts) { self.parts.withLock { $0 = parts } }

    private var bound: Parts {
        guard let parts = parts.withLock({ $0 }) else { preconditionFailure("EffectRunner used before bind") }
        return parts
    }

    /// Runs `effects` of a decision about session `id`, in order.
    func run(_ effects: [SessionEffect], for id: SessionID, awaiting: Bool = false) async {
        guard !effects.isEmpty else { return }
        let parts = bound
        for effect in effects {
            switch effect {
            case .launch(let requestedAt, let restore):
                parts.lifecycle.launchInBackground(id, requestedAt: requestedAt, restore: restore)
            case .terminate(let process, let sandbox, let rule, let host):
                await parts.lifecycle.markStopping(id)
                if awaiting {
                    await parts.lifecycle.finishStopping(id, process: process, sandbox: sandbox, rule: rule, host: host)
                } else {
                    parts.lifecycle.host.enqueue {
                        await parts.lifecycle.finishStopping(id, process: process, sandbox: sandbox, rule: rule, host: host)
                    }
                }
            case .discardLaunch(let process, let sandbox):
                await parts.lifecycle.discard(id, process: process, sandbox: sandbox)
            case .deliverCommands:
                await parts.gateway.deliverCommands(id)
            case .deliverCallbacks:
                callbackWakeUps.signal()
            case .autoCommit(let executionId):
                parts.lifecycle.host.enqueue { await parts.autoCommit.run(id, executionId: executionId) }
            case .released:
                await parts.lifecycle.released(id)
            case .removed(let rule):
                await parts.lifecycle.removed(id, rule: rule)
                await scheduler.arm(id, at: nil)
            }
        }
    }

    /// The session's deadlines may have moved: its rules are evaluated again now.
    func reschedule(_ id: SessionID) async { await scheduler.poke(id) }
}

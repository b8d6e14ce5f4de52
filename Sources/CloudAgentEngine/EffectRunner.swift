import CloudAgentCore
import Foundation
import Logging

/// Runs the effects of committed decisions, after the commit and outside any lock, through the
/// parts that carry them out (built before it; none of them holds it). Slow ones (a launch, a
/// stop's grace, git) run as background jobs unless the caller waits for them (`awaiting`:
/// DELETE waits for the processes to be gone). Every effect is idempotent.
package final class EffectRunner: SessionEffects {
    package let lifecycle: RuntimeLifecycle
    package let connections: RuntimeConnections
    package let autoCommit: AutoCommitRunner
    package let callbackWakeUps: WakeSignal

    package init(lifecycle: RuntimeLifecycle, connections: RuntimeConnections, autoCommit: AutoCommitRunner, callbackWakeUps: WakeSignal) {
        self.lifecycle = lifecycle
        self.connections = connections
        self.autoCommit = autoCommit
        self.callbackWakeUps = callbackWakeUps
    }

    package func run(_ effects: [SessionEffect], of committed: SessionChange?, for id: SessionID, awaiting: Bool, engine: Engine) async {
        for effect in effects {
            switch effect {
            case .launch(let requestedAt, let restore):
                lifecycle.launchInBackground(id, requestedAt: requestedAt, restore: restore, engine: engine)
            case .terminate(let process, let sandbox, let rule, let host):
                await lifecycle.markStopping(id)
                if awaiting {
                    await lifecycle.finishStopping(id, process: process, sandbox: sandbox, rule: rule, host: host, engine: engine)
                } else {
                    lifecycle.host.enqueue { [lifecycle] in
                        await lifecycle.finishStopping(id, process: process, sandbox: sandbox, rule: rule, host: host, engine: engine)
                    }
                }
            case .discardLaunch(let process, let sandbox):
                await lifecycle.discard(id, process: process, sandbox: sandbox)
            case .deliverCommands:
                await connections.deliverCommands(id, written: committed)
            case .deliverCallbacks:
                callbackWakeUps.signal()
            case .autoCommit(let executionId):
                lifecycle.host.enqueue { [autoCommit] in await autoCommit.run(id, executionId: executionId, engine: engine) }
            case .released:
                await lifecycle.released(id)
            case .removed(let rule):
                await lifecycle.removed(id, rule: rule)
                await engine.arm(id, at: nil)
            }
        }
    }
}

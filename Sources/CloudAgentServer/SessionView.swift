import CloudAgentCore
import CloudAgentEngine
import Foundation

/// The API's JSON views of sessions and executions (the API contract: docs/api.md and openapi.yaml). Secrets, the repo token and
/// callback headers never appear: only names.
public enum Views {
    /// `sandbox` is the control plane's sandbox, shown for a session whose runtime never launched.
    public static func session(_ session: SessionRecord, latest: Execution?, timing: Timing, sandbox: String) -> JSONValue {
        let spec = session.spec
        let idleTimeout = session.idleTimeoutMs(default: timing.idleTimeoutMs)
        let runtime = session.runtime
        let lastActivity =
            runtime.state == .running || runtime.state == .stopping || runtime.state == .stopped
            ? IdlePolicy.lastActivity(runtimeStartedAt: runtime.startedAt, latest: latest)
            : latest.map(IdlePolicy.activity(of:))
        var idleDeadline: Date?
        if case .idleAt(let deadline, _) = IdlePolicy.evaluate(runtime: runtime, latest: latest, idleTimeoutMs: idleTimeout, now: .distantPast) {
            idleDeadline = deadline
        }
        return [
            "sessionId": .string(session.id.rawValue),
            "createdAt": JSONValue(session.createdAt),
            "preparedAt": JSONValue(session.preparedAt),
            "initiatedAt": JSONValue(session.initiatedAt),
            "agent": .string(spec.agent),
            "mode": JSONValue(spec.mode),
            "model": JSONValue(spec.model),
            "agentConversationId": JSONValue(session.agentConversationId),
            "repo": spec.repo.map { ["url": .string($0.url), "branch": JSONValue($0.branch)] } ?? .null,
            "workBranch": JSONValue(session.workBranch),
            "envVarNames": .array(spec.envVars.keys.sorted().map(JSONValue.string)),
            "secretNames": .array(spec.secrets.keys.sorted().map(JSONValue.string)),
            "setupCommands": .array(spec.setupCommands.map(JSONValue.string)),
            "autoCommit": .bool(spec.autoCommit),
            "callback": spec.callback.map { ["url": .string($0.url)] } ?? .null,
            "idleTimeoutMs": JSONValue(idleTimeout),
            "sandbox": .string(runtime.sandbox ?? sandbox),
            "runtime": [
                "state": .string(runtime.state.rawValue),
                "startedAt": JSONValue(runtime.startedAt),
                "stoppedAt": JSONValue(runtime.stoppedAt),
                "stopReason": runtime.stopReason.map(stopReason) ?? .null,
            ],
            "activity": [
                "lastActivityAt": JSONValue(lastActivity?.at),
                "source": JSONValue(lastActivity?.source.rawValue),
                "idleDeadline": JSONValue(idleDeadline),
            ],
            "activeExecutionId": JSONValue(session.activeExecutionId?.rawValue),
            "executionCount": .number(Double(session.executionCount)),
            "latestExecution": latest.map { execution($0, session: session) } ?? .null,
            "approvals": .string(spec.approvals.rawValue),
            "mcpServers": .object(spec.mcpServers.mapValues(\.json)),
            "pendingInput": .number(Double(session.inputs.pending.count)),
            "queuedCount": .number(Double(session.queue.count)),
            "usage": session.usageTotal?.json ?? .null,
            "budget": session.budgetJSON,
            "events": ["outputBytes": .number(Double(session.eventBytes ?? 0)), "dropped": .number(Double(session.eventsDropped ?? 0))],
        ]
    }

    public static func stopReason(_ reason: StopReason) -> JSONValue {
        [
            "rule": .string(reason.rule.rawValue),
            "at": JSONValue(reason.at),
            "lastActivityAt": JSONValue(reason.lastActivityAt),
            "idleMs": JSONValue(reason.idleMs),
            "idleTimeoutMs": JSONValue(reason.idleTimeoutMs),
            "detail": JSONValue(reason.detail),
        ]
    }

    /// `session` gives the execution's `waitingForInput` (the request it waits on, if any).
    public static func execution(_ execution: Execution, session: SessionRecord?) -> JSONValue {
        [
            "waitingForInput": JSONValue(session?.inputs.waiting(execution.id)?.id),
            "executionId": .string(execution.id.rawValue),
            "status": .string(execution.status.rawValue),
            "prompt": .string(execution.prompt),
            "mode": JSONValue(execution.mode),
            "model": JSONValue(execution.model),
            "startedAt": JSONValue(execution.startedAt),
            "runningAt": JSONValue(execution.runningAt),
            "lastHeartbeat": JSONValue(execution.lastHeartbeat),
            "completedAt": JSONValue(execution.completedAt),
            "exitCode": JSONValue(execution.exitCode.map(Int64.init)),
            "error": JSONValue(execution.error),
            "interruptReason": JSONValue(execution.interruptReason),
            "progress": ["events": .number(Double(execution.progressEvents)), "lastEventAt": JSONValue(execution.lastEventAt)],
            "queuedAt": JSONValue(execution.queuedAt),
            "usage": execution.usage?.json ?? .null,
            "position": JSONValue((session?.queue.firstIndex(of: execution.id)).map { Int64($0 + 1) }),
        ]
    }
}

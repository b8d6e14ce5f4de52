import CloudAgentAgents
import CloudAgentCore
import Foundation

extension SessionService {
    /// Where a session's runtime log can be read.
    public enum RuntimeLogSource: Sendable, Equatable {
        /// Its last lines, from this host, the session's secrets masked (empty: no log yet).
        case text(String)
        /// On another live node, reached at this base URL.
        case elsewhere(node: String, baseURL: String)
        /// Its host node is gone: the log is on that machine.
        case gone(node: String)
    }

    /// At most this many lines per request; 200 when none is asked.
    public static let maxLogLines = 10_000
    public static let defaultLogLines = 200

    /// The session's runtime log: connects, reconnects and their reasons, agent launches and
    /// exits, signals, written by the runtime on the host that ran it. A stopped runtime's log is
    /// still there (until the session is deleted), and so is one written before a restart of
    /// `serve`. On several nodes, the log is on the runtime's host node. `localOnly`: answer from
    /// this host, never point elsewhere (a request another node forwarded).
    public func runtimeLog(_ id: SessionID, owner: Owner, lines: Int, localOnly: Bool) async throws -> RuntimeLogSource {
        let session = try await session(id, owner: owner)
        if !localOnly {
            switch ledger.cluster.placement(ofHost: session.runtime.hostNode, now: clock.now()) {
            case .here: break
            case .elsewhere(let node):
                if let url = ledger.cluster.nodes.first(where: { $0.id == node })?.advertiseURL { return .elsewhere(node: node, baseURL: url) }
                return .gone(node: node)
            case .lost(let node):
                return .gone(node: node)
            }
        }
        let text = await lifecycle.host.runtimeLog(id, lines: lines) ?? ""
        // Whatever a line might hold of a secret (the runtime masks what it knows), it leaves masked.
        var secrets = session.spec.secrets.values.compactMap { try? secretBox.open($0) }
        if let token = session.spec.repo?.token, let open = try? secretBox.open(token) { secrets.append(open) }
        let mask = SecretMask(values: secrets)
        return .text(mask.isEmpty ? text : text.split(separator: "\n", omittingEmptySubsequences: false).map { mask.apply(String($0)) }.joined(separator: "\n"))
    }
}

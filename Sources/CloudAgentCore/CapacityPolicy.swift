import Foundation

/// Which runtime gives its slot up when every slot of a host is held and another session needs
/// one. Pure: the shell reads the candidates, asks for a victim, and stops it in a transaction
/// of its own (`SessionReducer.evict`), which checks again — a message accepted meanwhile saves
/// it, and the shell asks again without it.
public enum CapacityPolicy {
    /// A session holding a slot, as the policy sees it.
    public struct Candidate: Sendable, Equatable {
        public var session: SessionRecord
        /// Its latest execution (its last activity).
        public var latestExecution: Execution?

        public init(session: SessionRecord, latestExecution: Execution?) {
            self.session = session
            self.latestExecution = latestExecution
        }

        /// Whether it may be evicted: running, with no accepted execution and no auto-commit pending.
        public var evictable: Bool {
            session.runtime.state == .running && session.activeExecutionId == nil && session.autoCommitPending == nil
        }

        /// Its last activity (`IdlePolicy.lastActivity`), else its creation.
        public var lastActivity: Date {
            IdlePolicy.lastActivity(runtimeStartedAt: session.runtime.startedAt, latest: latestExecution)?.at ?? session.createdAt
        }
    }

    /// The runtime to evict: among the evictable candidates, the one with the oldest last
    /// activity (the lower id first on a tie); nil when none may be evicted.
    public static func victim(candidates: [Candidate]) -> SessionID? {
        candidates.filter(\.evictable)
            .min { ($0.lastActivity, $0.session.id.rawValue) < ($1.lastActivity, $1.session.id.rawValue) }?
            .session.id
    }
}

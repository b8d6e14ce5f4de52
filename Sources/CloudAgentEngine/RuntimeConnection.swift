import CloudAgentCore
import CloudAgentProtocol
import Synchronization

/// One connected runtime: the session it serves, the launch it belongs to, and the queue of
/// frames to send it (drained by the WebSocket handler, so that writes never interleave).
public final class RuntimeConnection: Sendable {
    public let sessionId: SessionID
    public let instanceId: String
    private let outgoing: AsyncStream<ControlMessage>.Continuation
    /// The execution the runtime may heartbeat: set when it is sent, cleared when it ends.
    private let active = Mutex<ExecutionID?>(nil)
    /// The highest runtime-outbox row sent on this connection.
    package let deliveredThrough = Mutex<Int64>(0)
    /// Whether it was asked to shut down (sent once).
    package let askedToShutDown = Mutex(false)

    package init(sessionId: SessionID, instanceId: String, outgoing: AsyncStream<ControlMessage>.Continuation) {
        self.sessionId = sessionId
        self.instanceId = instanceId
        self.outgoing = outgoing
    }

    public func send(_ message: ControlMessage) { outgoing.yield(message) }
    public func close() { outgoing.finish() }

    package var activeExecution: ExecutionID? {
        get { active.withLock { $0 } }
        set { active.withLock { $0 = newValue } }
    }
}

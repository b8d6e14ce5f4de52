import Foundation

/// The runtime as it is stored (inside the session record, in SQLite and PostgreSQL): one flat
/// object, exactly as the struct of optionals `RuntimeStatus` used to be encoded — `state`, then
/// each field of the current state under its own key, a field without a value left out. A
/// record written before the states carried their data reads the same, and writes the same
/// bytes back.
extension RuntimeStatus: Codable {
    /// The stored keys, in the order the struct declared them.
    enum CodingKeys: String, CodingKey {
        case state, startedAt, requestedAt, launchedAt, stoppedAt, stopReason, instanceId, secretHash, process, cold, ackedSeq, connectedAt
        case sandbox, hostNode, connectedNode
    }

    /// Reads the fields of the stored state. A key that state has no field for is ignored (no
    /// write ever stored one). A field every version wrote in a state is required in it
    /// (`requestedAt` from `starting` on, `startedAt` and `connectedAt` while `running`, the
    /// `stopReason` of `stopping`); `cold` and `ackedSeq`, set by every start, read as false and
    /// 0 when missing, as they were always read.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func optional<Value: Decodable>(_ type: Value.Type, _ key: CodingKeys) throws -> Value? {
            try container.decodeIfPresent(type, forKey: key)
        }
        func required<Value: Decodable>(_ type: Value.Type, _ key: CodingKeys) throws -> Value {
            try container.decode(type, forKey: key)
        }
        switch try required(RuntimeState.self, .state) {
        case .stopped:
            self = try .stopped(
                Stopped(
                    startedAt: optional(Date.self, .startedAt), requestedAt: optional(Date.self, .requestedAt),
                    launchedAt: optional(Date.self, .launchedAt), stoppedAt: optional(Date.self, .stoppedAt),
                    stopReason: optional(StopReason.self, .stopReason), instanceId: optional(String.self, .instanceId),
                    cold: optional(Bool.self, .cold), ackedSeq: optional(Int64.self, .ackedSeq), connectedAt: optional(Date.self, .connectedAt),
                    sandbox: optional(String.self, .sandbox), hostNode: optional(String.self, .hostNode),
                    connectedNode: optional(String.self, .connectedNode)
                ))
        case .starting:
            self = try .starting(
                Starting(
                    requestedAt: required(Date.self, .requestedAt), cold: optional(Bool.self, .cold) ?? false,
                    launchedAt: optional(Date.self, .launchedAt), instanceId: optional(String.self, .instanceId),
                    secretHash: optional(String.self, .secretHash), process: optional(RuntimeProcess.self, .process),
                    ackedSeq: optional(Int64.self, .ackedSeq) ?? 0, sandbox: optional(String.self, .sandbox),
                    hostNode: optional(String.self, .hostNode), connectedNode: optional(String.self, .connectedNode)
                ))
        case .running:
            self = try .running(
                Running(
                    startedAt: required(Date.self, .startedAt), requestedAt: required(Date.self, .requestedAt),
                    cold: optional(Bool.self, .cold) ?? false, launchedAt: optional(Date.self, .launchedAt),
                    instanceId: optional(String.self, .instanceId), secretHash: optional(String.self, .secretHash),
                    process: optional(RuntimeProcess.self, .process), ackedSeq: optional(Int64.self, .ackedSeq) ?? 0,
                    connectedAt: required(Date.self, .connectedAt), sandbox: optional(String.self, .sandbox),
                    hostNode: optional(String.self, .hostNode), connectedNode: optional(String.self, .connectedNode)
                ))
        case .stopping:
            self = try .stopping(
                Stopping(
                    startedAt: optional(Date.self, .startedAt), requestedAt: required(Date.self, .requestedAt),
                    cold: optional(Bool.self, .cold) ?? false, launchedAt: optional(Date.self, .launchedAt),
                    stopReason: required(StopReason.self, .stopReason), instanceId: optional(String.self, .instanceId),
                    secretHash: optional(String.self, .secretHash), process: optional(RuntimeProcess.self, .process),
                    ackedSeq: optional(Int64.self, .ackedSeq) ?? 0, connectedAt: optional(Date.self, .connectedAt),
                    sandbox: optional(String.self, .sandbox), hostNode: optional(String.self, .hostNode),
                    connectedNode: optional(String.self, .connectedNode)
                ))
        }
    }

    /// Writes `state` and every field the state has a value for, as the struct's synthesized
    /// encoding did (`encodeIfPresent`: no key for a field without a value).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(state, forKey: .state)
        try container.encodeIfPresent(startedAt, forKey: .startedAt)
        try container.encodeIfPresent(requestedAt, forKey: .requestedAt)
        try container.encodeIfPresent(launchedAt, forKey: .launchedAt)
        try container.encodeIfPresent(stoppedAt, forKey: .stoppedAt)
        try container.encodeIfPresent(stopReason, forKey: .stopReason)
        try container.encodeIfPresent(instanceId, forKey: .instanceId)
        try container.encodeIfPresent(secretHash, forKey: .secretHash)
        try container.encodeIfPresent(process, forKey: .process)
        try container.encodeIfPresent(cold, forKey: .cold)
        try container.encodeIfPresent(ackedSeq, forKey: .ackedSeq)
        try container.encodeIfPresent(connectedAt, forKey: .connectedAt)
        try container.encodeIfPresent(sandbox, forKey: .sandbox)
        try container.encodeIfPresent(hostNode, forKey: .hostNode)
        try container.encodeIfPresent(connectedNode, forKey: .connectedNode)
    }
}

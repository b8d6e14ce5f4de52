/// Delays between reconnect attempts: exponential from `initial`, capped at `maximum`, each
/// with jitter (a uniform draw from the upper half of the step) so that runtimes cut off
/// together do not come back together.
public struct ReconnectBackoff: Sendable {
    public var initial: Duration
    public var maximum: Duration
    /// Failed attempts since the last successful connection.
    public private(set) var attempts = 0

    public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(2)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// The wait before the next attempt; counts the attempt.
    public mutating func nextDelay<Generator: RandomNumberGenerator>(using generator: inout Generator) -> Duration {
        let step = ceiling(forAttempt: attempts)
        attempts += 1
        return step * Double.random(in: 0.5...1.0, using: &generator)
    }

    public mutating func nextDelay() -> Duration {
        var generator = SystemRandomNumberGenerator()
        return nextDelay(using: &generator)
    }

    /// After a connection the control plane welcomed.
    public mutating func reset() { attempts = 0 }

    /// The un-jittered step for an attempt: `initial · 2^attempt`, at most `maximum`.
    public func ceiling(forAttempt attempt: Int) -> Duration {
        var step = initial
        for _ in 0..<min(attempt, 32) where step < maximum { step *= 2 }
        return min(step, maximum)
    }
}

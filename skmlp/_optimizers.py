"""Stochastic gradient descent with momentum and learning-rate schedules.

Same update rule and schedules as scikit-learn's ``SGDOptimizer``
(``sklearn/neural_network/_stochastic_optimizers.py``), but the parameters are updated
in place with array-API operations (``momentum_step``), so the optimizer runs on any
device, for one network or a stack of them.
"""


def momentum_step(param, velocity, step, momentum, nesterov, *, times, xp):
    """Update ``param`` in place: ``v <- m v - step``, then ``p <- p + v``.

    With Nesterov's momentum the change is ``m v - step`` with the new ``v``. The
    one update rule of every batch step, for one network or a stack of them.

    Parameters
    ----------
    param, velocity : arrays of one shape
        The parameters and their velocity, updated in place.
    step : array shaped like ``param``
        The plain step ``learning_rate * gradient`` (the gradient of the batch's mean
        cost, L2 term included).
    momentum : float or array broadcasting to ``param``
        Momentum coefficient(s) in [0, 1]; a float 0 leaves ``velocity`` at 0.
    nesterov : bool or boolean array broadcasting to ``param``
        Nesterov's momentum, for all or per element.
    times : callable
        ``times(a, b)`` is ``a * b`` shaped like ``velocity`` (on NumPy into a
        buffer kept for the purpose).
    xp : array namespace
    """
    if isinstance(momentum, float) and not momentum:
        param -= step
        return
    velocity *= momentum
    velocity -= step
    if nesterov is True:
        param -= step
        param += times(momentum, velocity)
    elif nesterov is False:
        param += velocity
    else:
        param += xp.where(nesterov, momentum * velocity - step, velocity)


class SGDOptimizer:
    """Mini-batch SGD with (Nesterov) momentum.

    Parameters
    ----------
    params : list of arrays
        The parameters, only used to shape the velocities.
    learning_rate_init : float
        Initial step size.
    lr_schedule : {"constant", "invscaling", "adaptive"}
        How the step size evolves (see ``SGDMLPClassifier``).
    momentum : float
        Momentum coefficient in [0, 1].
    nesterov : bool
        Whether to use Nesterov's momentum.
    power_t : float
        Exponent of the inverse scaling schedule.
    xp : array namespace

    Attributes
    ----------
    learning_rate : float
        The current step size.
    velocities : list of arrays
        One velocity per parameter.
    """

    def __init__(
        self, params, learning_rate_init, lr_schedule, momentum, nesterov, power_t, xp
    ):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self.velocities = [xp.zeros_like(p) for p in params]

    def iteration_ends(self, time_step):
        """Update the step size at the end of an epoch (``time_step``: samples seen)."""
        if self.lr_schedule == "invscaling":
            self.learning_rate = (
                self.learning_rate_init / (time_step + 1) ** self.power_t
            )

    def trigger_stopping(self):
        """Decide what to do when the loss stalls; returns True to stop training.

        With the adaptive schedule the step size is divided by 5 instead, until it falls
        below 1e-6.
        """
        if self.lr_schedule != "adaptive" or self.learning_rate <= 1e-6:
            return True
        self.learning_rate /= 5.0
        return False

"""Stochastic gradient descent with momentum and learning-rate schedules.

Same update rule and schedules as scikit-learn's ``SGDOptimizer``
(``sklearn/neural_network/_stochastic_optimizers.py``), but the parameters are updated
in place with array-API operations, so the optimizer runs on any device.
"""


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

    def update_params(self, params, grads, scalars=None):
        """Update ``params`` in place: ``v <- m v - lr g``, then ``p <- p + v``.

        With Nesterov's momentum the step is ``m v - lr g`` with the new ``v``. The
        gradients are consumed: they are scaled in place (callers pass fresh arrays),
        which spares the large temporaries that dominate wide networks.

        Parameters
        ----------
        params : list of arrays
            The parameters, shaped like ``velocities``.
        grads : list of arrays
            Gradients of the batch's mean cost, shaped like ``params``; overwritten.
        scalars : tuple of two 0-d arrays or None, default=None
            ``(learning_rate, momentum)`` on the parameters' device, read by the kernels
            when they run (a captured GPU graph replays them); None uses the current
            Python values.
        """
        lr, momentum = (
            (self.learning_rate, self.momentum) if scalars is None else scalars
        )
        for param, velocity, grad in zip(params, self.velocities, grads, strict=True):
            grad *= lr  # grad now holds the plain step lr * g
            if not self.momentum:
                param -= grad
                continue
            velocity *= momentum
            velocity -= grad
            if self.nesterov:
                param -= grad
                param += momentum * velocity
            else:
                param += velocity

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

"""Loss-weighting strategies: one class per module behind the `Weighting` interface
(`mtltrain.weighting.base`), usable in any training loop; the solvers several share are in
`mtltrain.weighting.solvers`."""

from mtltrain.weighting.aligned_mtl import AlignedMTL
from mtltrain.weighting.auto_lambda import AutoLambda
from mtltrain.weighting.base import Weighting
from mtltrain.weighting.cagrad import CAGrad
from mtltrain.weighting.conflict_free import ConFIG
from mtltrain.weighting.cr_mogm import CRMOGM
from mtltrain.weighting.db_mtl import DBMTL
from mtltrain.weighting.dtp import DynamicTaskPrioritization
from mtltrain.weighting.dualproj import DualProj
from mtltrain.weighting.dwa import DynamicWeightAverage
from mtltrain.weighting.excess_mtl import ExcessMTL
from mtltrain.weighting.fairgrad import FairGrad
from mtltrain.weighting.famo import FAMO
from mtltrain.weighting.fixed import FixedWeighting
from mtltrain.weighting.geometric import GeometricMean
from mtltrain.weighting.go4align import GO4Align
from mtltrain.weighting.graddrop import GradDrop
from mtltrain.weighting.gradnorm import GradNorm
from mtltrain.weighting.gradvac import GradVac
from mtltrain.weighting.imtl import IMTL
from mtltrain.weighting.ldc_mtl import LDCMTL
from mtltrain.weighting.mgda import MGDA
from mtltrain.weighting.moco import MoCo
from mtltrain.weighting.modo import MoDo
from mtltrain.weighting.nash_mtl import NashMTL
from mtltrain.weighting.pcgrad import PCGrad
from mtltrain.weighting.revised_uncertainty import RevisedUncertaintyWeighting
from mtltrain.weighting.rlw import RandomLossWeighting
from mtltrain.weighting.scale_invariant import ScaleInvariant
from mtltrain.weighting.sdmgrad import SDMGrad
from mtltrain.weighting.stch import SmoothTchebycheff
from mtltrain.weighting.uncertainty import UncertaintyWeighting
from mtltrain.weighting.upgrad import UPGrad
from mtltrain.weighting.uw_so import SoftOptimalUncertainty

__all__ = [
    "CRMOGM",
    "DBMTL",
    "FAMO",
    "IMTL",
    "LDCMTL",
    "MGDA",
    "AlignedMTL",
    "AutoLambda",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "ExcessMTL",
    "FairGrad",
    "FixedWeighting",
    "GO4Align",
    "GeometricMean",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "RandomLossWeighting",
    "RevisedUncertaintyWeighting",
    "SDMGrad",
    "ScaleInvariant",
    "SmoothTchebycheff",
    "SoftOptimalUncertainty",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighting",
]
